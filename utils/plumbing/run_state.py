"""Runs that are safe to interrupt and to repeat: one mechanism for every training in the course.

A run lives in one folder. Its fingerprint (settings, data, model) is written there when it
starts (STARTED); checkpoints are `checkpoint-<step>` folders; FINISHED holds what the run
measured once it ended. Running the same thing again then:

- reuses the finished run (`RunFolder.finished`);
- or resumes from the newest complete checkpoint (`RunFolder.last_checkpoint`), after deleting
  any checkpoint that was interrupted while being written;
- and never continues a folder that another configuration started (`RunFolder.claim` deletes it).

Supervised training (utils.training), the reward model (utils.reward_model) and PPO (utils.ppo)
all use it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from utils.plumbing.files import write_json_atomic

STARTED = "training.json"  # which configuration the checkpoints in a folder belong to
FINISHED = "finished.json"  # what a run that ended measured
CHECKPOINT_PREFIX = "checkpoint-"


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
        """Make the folder this run's: a folder another configuration started is deleted first."""
        started = self.path / STARTED
        if started.exists() and json.loads(started.read_text())["fingerprint"] != self.fingerprint:
            print(f"{self.path} holds a different {self.what}; starting afresh.")
            self.discard()
        if not started.exists():
            write_json_atomic(started, {"fingerprint": self.fingerprint, "name": self.path.name})

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
        return max(complete)[1] if complete else None

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
            print(f"{self.path} holds a longer {self.what} ({state['step']} steps); starting afresh.")
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
