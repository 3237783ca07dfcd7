"""`python -m utils reference`: the executed notebooks of one run, kept in the repository to compare with.

From runs/<profile>/ (what `python -m utils run` wrote: status.json and notebooks/*.ipynb) it writes
reference/<profile>/<stem>.ipynb for every course notebook, and reference/<profile>/run.json:

    {"profile": "offline", "commit": "<git HEAD>", "lock": "<12 hex of requirements/lock.txt's sha256>",
     "machine": "<the runner's machine summary>", "precision": "bf16 autocast" | "float32",
     "notebooks": {"01_prompting": {"seconds": 109.0, "peak_ram_mb": 2345}, ...}}

A copy is the notebook as it is now (its Markdown with the `**Time**:` line from this run and figure
links that work from reference/<profile>/) with the outputs of the run, cleaned to stay small: no
stderr, no progress bars or widgets, images as PNG at most MAX_IMAGE_WIDTH pixels wide, no timing
metadata. It refuses (ReferenceRunError) when a notebook failed, is missing from the run, or its code
changed since it ran: the copies are always one complete run of the code in notebooks/.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import re
import subprocess
from pathlib import Path

import nbformat

from utils.apps.runner import notebook_paths
from utils.apps.times import REFERENCE_DIR, first_markdown, time_line, with_time_line
from utils.plumbing.files import PROJECT_ROOT, write_json_atomic, write_text_atomic

LOCK = PROJECT_ROOT / "requirements" / "lock.txt"
MAX_IMAGE_WIDTH = 800  # pixels; wider plots are scaled down
SIZE_WARNING_BYTES = 5 * 2**20  # the whole folder above this: say so
# tqdm's "45%|████▌     | 9/20 [00:01<00:02, ...]" and, without a total, "Generating split: 0 examples [00:00, ...]"
PROGRESS_BAR = re.compile(r"\d+%\|.*\||\[\d+:\d\d(:\d\d)?[<,]")
FIGURE_LINK = re.compile(r"(\]\(|src=[\"'])figures/")  # Markdown and HTML links to notebooks/figures/


class ReferenceRunError(RuntimeError):
    """The run cannot give reference copies: a notebook failed, is missing, or changed since it ran."""


def code_sources(notebook: nbformat.NotebookNode) -> list[str]:
    """The source of every code cell, in order: what a reference copy must share with its notebook."""
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def lock_digest(lock: Path = LOCK) -> str:
    """The first 12 hex digits of the lock file's sha256: which versions of every library ran."""
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:12]


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The commit checked out in `root` ("unknown" outside git)."""
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    return found.stdout.strip() or "unknown"


def without_progress(text: str) -> str:
    """Printed text as a terminal would leave it (each line's last carriage-return part), progress-bar lines dropped."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(line for line in lines if not PROGRESS_BAR.search(line))


def small_png(data: str, max_width: int = MAX_IMAGE_WIDTH) -> str:
    """A base64 image as base64 PNG at most `max_width` pixels wide (smaller ones keep their size)."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def cleaned_output(output: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """An output as a reference copy keeps it, or None to drop it (stderr, a progress bar, a widget)."""
    if output.output_type == "stream":
        if output.name != "stdout":
            return None
        text = without_progress(output.text)
        return nbformat.v4.new_output("stream", name="stdout", text=text) if text.strip() else None
    if output.output_type not in ("display_data", "execute_result"):
        return output  # errors: a run with one is refused before
    data = {mime: value for mime, value in output.data.items() if "widget" not in mime}
    if "<progress" in data.get("text/html", ""):  # the Trainer's progress bar in a notebook
        return None
    if not data or set(data) == {"text/plain"} and (re.match(r"^(HBox|VBox|FloatProgress)\(", data["text/plain"])
                                                    or PROGRESS_BAR.search(data["text/plain"])):
        return None
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            data.pop(mime)
            data["image/png"] = small_png(output.data[mime])
    cleaned = copy.deepcopy(output)
    cleaned.data = data
    cleaned.metadata = {key: value for key, value in output.get("metadata", {}).items() if key not in ("image/png", "image/jpeg")}
    return cleaned


def reference_copy(notebook: nbformat.NotebookNode, executed: nbformat.NotebookNode, time: str) -> nbformat.NotebookNode:
    """`notebook` with the cleaned outputs of `executed` (the same code, run), its `**Time**:` line `time`, and
    links to figures/ that work from reference/<profile>/."""
    result = copy.deepcopy(notebook)
    ran = [cell for cell in executed.cells if cell.cell_type == "code"]
    for cell in result.cells:
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type == "markdown":
            cell.source = FIGURE_LINK.sub(r"\1../../notebooks/figures/", cell.source)
        if cell.cell_type == "code":
            done = ran.pop(0)
            cell.execution_count = done.execution_count
            cell.outputs = [kept for kept in map(cleaned_output, done.outputs) if kept is not None]
    title = first_markdown(result)
    if title is not None:
        title.source = with_time_line(title.source, time)
    result.metadata.pop("widgets", None)
    if "language_info" in executed.metadata:  # the kernel's Python version, as the run had it
        result.metadata["language_info"] = executed.metadata["language_info"]
    return result


def precision_now(profile_name: str) -> str:
    """What training in `profile_name` computes in on this machine, for a run whose status.json did not say."""
    from utils.models import training_precision
    from utils.profiles import get_profile, with_overrides

    return "bf16 autocast" if training_precision(with_overrides(get_profile(profile_name)))[0] is not None else "float32"


def run_summary(profile_name: str, status: dict, stems: list[str]) -> dict:
    """run.json's content for the notebooks `stems` of a run whose status.json is `status`."""
    first = status[stems[0]]
    return {"profile": profile_name, "commit": git_commit(), "lock": lock_digest(), "machine": first.get("machine", ""),
            "precision": first.get("precision") or precision_now(profile_name),
            "notebooks": {stem: {"seconds": status[stem]["seconds"], "peak_ram_mb": status[stem].get("peak_ram_mb")}
                          for stem in stems}}


def checked_run(run_folder: Path, paths: list[Path]) -> dict:
    """The run's status.json, after checking that every notebook in `paths` ran to the end with its code of now."""
    status_path = run_folder / "status.json"
    if not status_path.exists():
        raise ReferenceRunError(f"no run in {run_folder} (no status.json): run the course first (make run)")
    status = json.loads(status_path.read_text(encoding="utf-8"))
    for path in paths:
        entry, executed = status.get(path.stem), run_folder / "notebooks" / path.name
        if entry is None or not executed.exists():
            raise ReferenceRunError(f"{path.stem} is missing from the run in {run_folder}: run it (make run)")
        if entry.get("status") != "done":
            raise ReferenceRunError(f"{path.stem} failed in the run in {run_folder} (see {executed}): "
                                    f"fix it and run it again (make run NOTEBOOKS={path.stem[:2]})")
        if code_sources(nbformat.read(executed, as_version=4)) != code_sources(nbformat.read(path, as_version=4)):
            raise ReferenceRunError(f"{path.stem}'s code changed since the run in {run_folder}: "
                                    f"run it again (make run NOTEBOOKS={path.stem[:2]})")
    return status


def write_reference(run_folder: Path, profile_name: str, paths: list[Path] | None = None,
                    reference_dir: Path = REFERENCE_DIR) -> list[Path]:
    """Write reference/<profile>/run.json and a cleaned copy of each notebook from the run in `run_folder`;
    the files written. Raises ReferenceRunError (and writes nothing) unless every notebook ran to the end."""
    paths = paths if paths is not None else notebook_paths()
    status = checked_run(run_folder, paths)
    target = reference_dir / profile_name
    target.mkdir(parents=True, exist_ok=True)
    summary = run_summary(profile_name, status, [path.stem for path in paths])
    write_json_atomic(target / "run.json", summary)
    written = [target / "run.json"]
    for stale in set(target.glob("*.ipynb")) - {target / path.name for path in paths}:
        stale.unlink()  # a notebook renamed or removed since the last reference run
    for path in paths:
        executed = nbformat.read(run_folder / "notebooks" / path.name, as_version=4)
        copied = reference_copy(nbformat.read(path, as_version=4), executed, time_line(path.stem, reference_dir))
        nbformat.validate(copied)
        write_text_atomic(target / path.name, nbformat.writes(copied) + "\n")
        written.append(target / path.name)
    return written


def folder_bytes(folder: Path) -> int:
    """The size of every file in `folder`, together."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
