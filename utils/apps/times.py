"""`python -m utils sync-times`: each notebook's `**Time**:` line, written from the reference run.

The line sits in the notebook's first Markdown cell (its title cell) and says, per profile, how
long the notebook takes: from reference/<profile>/run.json where `python -m utils reference` wrote
one (rounded, on what kind of machine, in which precision), else "not measured yet". Never by hand,
never exact seconds, never a date.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import nbformat

from utils.plumbing.files import PROJECT_ROOT, write_text_atomic

REFERENCE_DIR = PROJECT_ROOT / "reference"
TIME_PREFIX = "**Time**:"
MEASURED_PROFILES = ("offline", "colab", "gpu")  # those a reference run can measure; the tiny ones are for tests
TINY = "`tiny` about a minute (random weights, for tests)"


def read_run(profile: str = "offline", reference_dir: Path = REFERENCE_DIR) -> dict | None:
    """reference/<profile>/run.json, or None when no reference run of that profile was written."""
    path = reference_dir / profile / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def rounded_duration(seconds: float) -> str:
    """A duration as a learner plans with it: "under a minute", "about 4 min", "about 25 min", "about 1.5 h"."""
    minutes = seconds / 60
    if minutes < 1:
        return "under a minute"
    if minutes < 10:
        return f"about {round(minutes)} min"
    if minutes < 60:
        return f"about {5 * round(minutes / 5)} min"
    return f"about {round(minutes / 30) / 2:g} h"


def rounded_ram(megabytes: float) -> str:
    """Peak RAM to the half gigabyte (at least 0.5 GB): "2.5 GB"."""
    return f"{max(0.5, round(megabytes / 512) / 2):g} GB"


def machine_words(machine: str) -> str:
    """"a 2-core CPU" or "an NVIDIA L4 GPU", from the runner's machine summary (utils.apps.runner.machine_summary)."""
    gpu = re.search(r"; GPU (.+)$", machine)
    if gpu:
        name = gpu.group(1).strip()
        return f"{'an' if name[:1].upper() in 'AEIOU' else 'a'} {name} GPU"
    cores = re.search(r"(\d+) cores", machine)
    return f"a {cores.group(1)}-core CPU" if cores else "a CPU"


def profile_time(profile: str, stem: str, run: dict | None) -> str | None:
    """The time of notebook `stem` in `profile` from its reference run, e.g. "`offline` about 5 min and 2 GB of
    RAM on a 2-core CPU with bf16 (the reference run)"; None when that run did not measure it."""
    measured = (run or {}).get("notebooks", {}).get(stem)
    if not measured:
        return None
    precision = "with bf16" if run.get("precision", "").startswith("bf16") else "in float32"
    ram = f" and {rounded_ram(measured['peak_ram_mb'])} of RAM" if measured.get("peak_ram_mb") else ""
    return (f"`{profile}` {rounded_duration(measured['seconds'])}{ram} on {machine_words(run.get('machine', ''))} "
            f"{precision} (the reference run)")


def time_line(stem: str, reference_dir: Path = REFERENCE_DIR) -> str:
    """The whole `**Time**:` line of notebook `stem`, from the reference runs under `reference_dir`."""
    measured, unmeasured = [], []
    for profile in MEASURED_PROFILES:
        words = profile_time(profile, stem, read_run(profile, reference_dir))
        if words:
            measured.append(words)
        else:
            unmeasured.append(f"`{profile}`")
    parts = [*measured, TINY] + ([f"{', '.join(unmeasured)}: not measured yet"] if unmeasured else [])
    return f"{TIME_PREFIX} {' · '.join(parts)}"


def with_time_line(source: str, line: str) -> str:
    """Markdown `source` with its line that starts with **Time**: replaced by `line` (unchanged if it has none)."""
    return "\n".join(line if old.startswith(TIME_PREFIX) else old for old in source.split("\n"))


def first_markdown(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """The notebook's first Markdown cell (its title cell), or None."""
    return next((cell for cell in notebook.cells if cell.cell_type == "markdown"), None)


def sync_time_line(path: str | Path, reference_dir: Path = REFERENCE_DIR) -> bool:
    """Rewrite the `**Time**:` line of the notebook at `path` from the reference runs; False when it was
    already right or the notebook has no such line in its first Markdown cell (then the file is untouched)."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    cell = first_markdown(notebook)
    if cell is None:
        return False
    synced = with_time_line(cell.source, time_line(path.stem, reference_dir))
    if synced == cell.source:
        return False
    cell.source = synced
    write_text_atomic(path, nbformat.writes(notebook) + "\n")
    return True


def sync_time_lines(paths: Iterable[str | Path], reference_dir: Path = REFERENCE_DIR) -> list[Path]:
    """`sync_time_line` for every notebook in `paths`; those that changed."""
    return [Path(path) for path in paths if sync_time_line(path, reference_dir)]
