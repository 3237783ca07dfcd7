"""Work done once: a result kept under the fingerprint of everything that produced it, read back next time.

Checkpoints make trainings reusable (utils.plumbing.run_state); this folder does the same for
results that are cheaper to keep than to compute again, such as the summaries a model wrote. A
record is one JSON file named by its fingerprint (utils.plumbing.run_state.fingerprint of the
inputs), written atomically, so an interrupted write leaves nothing to read back. Deleting the
folder, or a file in it, makes the work run again.
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.plumbing.files import write_json_atomic


def reused(folder: Path, fingerprint: str) -> dict | None:
    """The record kept under `fingerprint` in `folder`, or None when there is none (or it cannot be read)."""
    path = Path(folder) / f"{fingerprint}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def keep_for_reuse(folder: Path, fingerprint: str, record: dict) -> None:
    """Keep `record` (JSON-ready) under `fingerprint` in `folder`."""
    write_json_atomic(Path(folder) / f"{fingerprint}.json", record)
