"""Where the course keeps things, and writing them so an interruption never leaves half a file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = PROJECT_ROOT / "data"


def cache_dir() -> Path:
    """Folder for converted and generated models: $COURSE_CACHE_DIR, else ~/.cache/finetuning-course."""
    configured = os.environ.get("COURSE_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "finetuning-course"
    base.mkdir(parents=True, exist_ok=True)
    return base


class DiskSpaceError(RuntimeError):
    """The disk holding the model cache has too little free space for what is about to be written."""


def require_cache_space(needed_bytes: int, what: str) -> None:
    """Raise DiskSpaceError, naming the folder, the free and the needed space, unless the cache's disk has room."""
    folder = cache_dir()
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise DiskSpaceError(
            f"Not enough disk space for {what} in {folder}: {free / 2**20:,.0f} MB free, "
            f"{needed_bytes / 2**20:,.0f} MB needed. Free some space, or set COURSE_CACHE_DIR "
            "to a folder on a disk with more room."
        )


def runs_dir(profile_name: str) -> Path:
    """Folder for one profile's results, reports and checkpoints: $COURSE_RUNS_DIR or runs/, per profile.

    A relative COURSE_RUNS_DIR is taken from the project folder, so the notebooks' kernels (which
    run in notebooks/) and the commands find the same folder.
    """
    configured = os.environ.get("COURSE_RUNS_DIR")
    base = PROJECT_ROOT / configured if configured else PROJECT_ROOT / "runs"
    folder = base / profile_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block finishes.

    An interrupted block leaves `target` untouched (absent, or as it was), so a later
    run never loads a half-written model.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _permissions_for(path: Path) -> int:
    """The permission bits `path` has, or those a new file gets (0o666 less the umask)."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename (keeping the file's permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    permissions = _permissions_for(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(temporary, permissions)  # mkstemp's file is private (0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_json_atomic(path: Path, value: object) -> None:
    """Write `value` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")
