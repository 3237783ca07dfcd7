"""Runs that are safe to interrupt and to repeat: one mechanism for every training in the course.

A run lives in one folder. Its fingerprint (settings, data, model) is written there when it
starts (STARTED); checkpoints are `checkpoint-<step>` folders; FINISHED holds what the run
measured once it ended. Running the same thing again then:

- reuses the finished run (`RunFolder.finished`);
- or resumes from the newest complete checkpoint (`RunFolder.last_checkpoint`), after deleting
  any checkpoint that was interrupted while being written and setting aside (renaming, never
  deleting) one whose files are damaged, a truncated safetensors file say;
- and never continues a folder that another configuration started (`RunFolder.claim`): a finished
  run of other settings is kept beside it (`<name>.kept-<fingerprint>`) and comes back when those
  settings are asked for again; an unfinished one is deleted.

Supervised training (utils.training), the reward model (utils.reward_model) and PPO (utils.ppo)
all use it.
"""

from __future__ import annotations

import hashlib
import json
import random
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from utils.plumbing.files import write_json_atomic

STARTED = "training.json"  # which configuration the checkpoints in a folder belong to
FINISHED = "finished.json"  # what a run that ended measured
CHECKPOINT_PREFIX = "checkpoint-"
KEPT = ".kept-"  # a finished run of other settings, set aside: <name>.kept-<fingerprint>
DAMAGED = "damaged-"  # a damaged checkpoint or file, set aside: damaged-<name>


def fingerprint(settings: Mapping, identity: str = "", data: Iterable = ()) -> str:
    """16 hex digits that change when the settings, the identity (the model, say) or any data item changes."""
    digest = hashlib.sha256((json.dumps(settings, sort_keys=True, default=str) + identity).encode())
    for item in data:
        digest.update(json.dumps(item, default=str).encode())
    return digest.hexdigest()[:16]


def checkpoint_step(folder: Path) -> int | None:
    """The step in a folder name `checkpoint-<step>`, or None for any other name."""
    match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", folder.name)
    return int(match.group(1)) if match else None


class RunFolder:
    """The folder of one run, identified by its fingerprint; `what` names the run in messages."""

    def __init__(self, path: str | Path, fingerprint: str, what: str = "training"):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.what = what

    def claim(self) -> None:
        """Make the folder this run's, losing no finished run.

        A folder another configuration started is not continued: a finished run there is kept
        beside it (`kept_path`), an unfinished one deleted; a run of this configuration kept
        earlier comes back. A folder whose STARTED file is unreadable is set aside as damaged,
        and so is a finished run whose record or saved files are damaged (the run then resumes
        from its last checkpoint).
        """
        started = self.path / STARTED
        owner = self._owner()
        if owner is not None and owner != self.fingerprint:
            if self.finished_intact() is not None:
                kept = _free_name(self.kept_path(owner))
                os.replace(self.path, kept)
                print(f"{self.path} holds a finished {self.what} of other settings: kept it as {kept} "
                      f"(it comes back when those settings are run again; delete it to free the space).")
            else:
                print(f"{self.path} holds an unfinished {self.what} of other settings; starting afresh.")
                self.discard()
        mine = self.kept_path(self.fingerprint)
        if not self.path.exists() and mine.is_dir():
            os.replace(mine, self.path)
            print(f"Brought back the {self.what} of these settings kept in {mine}.")
        if not started.exists():
            write_json_atomic(started, {"fingerprint": self.fingerprint, "name": self.path.name})
        self.finished_intact()

    def kept_path(self, fingerprint: str) -> Path:
        """Where a finished run of `fingerprint`'s settings is kept when another configuration takes the folder."""
        return self.path.with_name(f"{self.path.name}{KEPT}{fingerprint}")

    def _owner(self) -> str | None:
        """The fingerprint in STARTED; None when there is none. An unreadable one sets the folder aside."""
        started = self.path / STARTED
        if not started.exists():
            return None
        try:
            return str(json.loads(started.read_text(encoding="utf-8"))["fingerprint"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            damaged = set_aside(self.path)
            print(f"{started} is damaged, so nothing tells which settings {self.path} holds: set it aside as "
                  f"{damaged} (delete it when you no longer need it); starting afresh.")
            return None

    def finished_intact(self) -> dict | None:
        """The finished record, after checking it and the files saved beside the checkpoints (final/).

        A damaged record or a damaged saved folder is set aside (renamed `damaged-...`): the run is then
        unfinished and resumes from its last checkpoint.
        """
        record_path = self.path / FINISHED
        if not record_path.exists():
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            record = None
        damaged = [] if record is not None else [record_path]
        damaged += [folder for folder in sorted(self.path.iterdir()) if folder.is_dir()
                    and checkpoint_step(folder) is None and not folder.name.startswith((DAMAGED, "."))
                    and not files_intact(folder)]
        if not damaged:
            return record
        for path in damaged + ([record_path] if record is not None else []):
            moved = set_aside(path)
            print(f"{path} is damaged (a truncated or unreadable file): set it aside as {moved}.")
        print(f"The {self.what} in {self.path} goes on from its last good checkpoint.")
        return None

    def discard(self) -> None:
        """Delete everything the folder holds."""
        if self.path.exists():
            shutil.rmtree(self.path)

    def finished(self) -> dict | None:
        """What the finished run recorded, or None when it has not finished."""
        path = self.path / FINISHED
        return json.loads(path.read_text()) if path.exists() else None

    def finish(self, record: dict) -> None:
        """Mark the run finished, keeping `record` (what it measured) for reuse."""
        write_json_atomic(self.path / FINISHED, record)

    def reopen(self) -> None:
        """Mark a finished run unfinished again (to train it for more steps)."""
        (self.path / FINISHED).unlink(missing_ok=True)

    def last_checkpoint(self, complete_marker: str) -> Path | None:
        """The newest checkpoint holding `complete_marker` (the file written last), or None.

        A process killed while saving leaves a checkpoint without its marker: such folders are
        deleted, so the run resumes from the last complete checkpoint instead of failing.
        """
        if not self.path.exists():
            return None
        for staging in self.path.glob(f".{CHECKPOINT_PREFIX}*.partial-*"):  # utils.plumbing.files.atomic_directory's
            print(f"Deleting {staging}, a checkpoint interrupted while it was being written.")
            shutil.rmtree(staging, ignore_errors=True)
        complete = []
        for folder in self.path.glob(CHECKPOINT_PREFIX + "*"):
            step = checkpoint_step(folder)
            if step is None or not folder.is_dir():
                continue
            if (folder / complete_marker).exists():
                complete.append((step, folder))
            else:
                print(f"Deleting {folder}, a checkpoint interrupted while it was being written.")
                shutil.rmtree(folder)
        for step, folder in sorted(complete, reverse=True):
            if files_intact(folder):
                return folder
            moved = set_aside(folder)
            print(f"{folder} is damaged (a truncated or unreadable file): set it aside as {moved}; "
                  "going on from the checkpoint before it, if any.")
        return None

    def resume_point(self, steps: int, state_file: str) -> tuple[Path | None, dict | None, dict | None]:
        """Where a run of `steps` steps (PPO, DPO) starts: (last checkpoint, its state, finished record).

        Each checkpoint's `state_file` (JSON, written last) holds its "step". A longer run in the folder
        is discarded (all three None: start afresh); a finished run of exactly `steps` steps comes back
        with its finished record (reuse it); otherwise the folder is reopened, and training resumes from
        the last checkpoint (None: from the start).
        """
        last = self.last_checkpoint(state_file)
        state = None if last is None else json.loads((last / state_file).read_text(encoding="utf-8"))
        if state is not None and state["step"] > steps:
            if self.finished() is not None:
                kept = _free_name(self.path.with_name(f"{self.path.name}{KEPT}{self.fingerprint}-{state['step']}-steps"))
                os.replace(self.path, kept)
                print(f"{self.path} holds a longer finished {self.what} ({state['step']} steps): kept it as {kept} "
                      f"(rename it back to use it, or delete it); starting afresh.")
            else:
                print(f"{self.path} holds a longer unfinished {self.what} ({state['step']} steps); starting afresh.")
                self.discard()
            self.claim()
            return None, None, None
        finished = self.finished()
        if finished is not None and finished["steps"] == steps and state is not None:
            return last, state, finished
        self.reopen()  # a finished shorter run goes on from its last checkpoint
        return last, state, None

    def checkpoint_folder(self, step: int) -> Path:
        """Where the checkpoint of `step` goes."""
        return self.path / f"{CHECKPOINT_PREFIX}{step}"

    def keep_only(self, newest: Path) -> None:
        """Delete every checkpoint but `newest`: the newest is all a resume needs."""
        for folder in self.path.glob(CHECKPOINT_PREFIX + "*"):
            if folder != newest and folder.is_dir() and checkpoint_step(folder) is not None:
                shutil.rmtree(folder)


def _free_name(path: Path) -> Path:
    """`path`, or `path` with -2, -3, ... appended when that name is taken."""
    candidate, number = path, 2
    while candidate.exists():
        candidate, number = path.with_name(f"{path.name}-{number}"), number + 1
    return candidate


def set_aside(path: Path) -> Path:
    """Rename a damaged file or folder to damaged-<name> beside it (never delete it); returns the new path."""
    moved = _free_name(path.with_name(DAMAGED + path.name))
    os.replace(path, moved)
    return moved


def safetensors_intact(path: Path) -> bool:
    """Whether a safetensors file is whole: its header reads and the file is as long as the header says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            (header_size,) = struct.unpack("<Q", stream.read(8))
            if header_size > size - 8:
                return False
            header = json.loads(stream.read(header_size))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        return size == 8 + header_size + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return False


def files_intact(folder: Path) -> bool:
    """Whether every file a checkpoint or saved model holds reads: safetensors whole, JSON parsing,
    torch's zip files (optimizer.pt, rng_state.pth, ...) with their index. Reads headers, not weights."""
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".safetensors" and not safetensors_intact(path):
            return False
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                return False
        if path.suffix in (".pt", ".pth", ".bin") and _starts_with(path, b"PK"):  # torch.save's zip format
            try:
                with zipfile.ZipFile(path):
                    pass
            except (OSError, zipfile.BadZipFile):
                return False
    return True


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as stream:
        return stream.read(len(magic)) == magic


def seed_rngs(seed: int) -> None:
    """Seed every random generator a run draws from (torch and CUDA, Python, NumPy), for a run that starts afresh."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def step_progress(name: str, start_step: int, steps: int):
    """A progress bar over the steps still to run, counting from `start_step` (off when TQDM_DISABLE=1)."""
    from tqdm.auto import tqdm

    return tqdm(range(start_step, steps), desc=name, initial=start_step, total=steps,
                disable=os.environ.get("TQDM_DISABLE") == "1")


class StepLog:
    """What the results of a step-by-step run (PPO, DPO, GRPO) read from their `history`, one record per step."""

    history: list[dict]

    @property
    def train_seconds(self) -> float:
        return sum(record["seconds"] for record in self.history)

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one logged quantity, for plots."""
        return [(record["step"], record[key]) for record in self.history]


def rng_state() -> dict:
    """The state of every random generator a run draws from (torch, CUDA, Python, NumPy), as JSON-ready lists."""
    state = {
        "torch": torch.get_rng_state().tolist(),
        "python": _as_lists(random.getstate()),
        "numpy": _as_lists(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _as_lists(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_as_lists(v) for v in value]
    return value


def restore_rng_state(state: dict) -> None:
    """Put back the generators' state that `rng_state` saved, so a resumed run draws what the uninterrupted one did."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
