"""The Makefile on a Mac: stock macOS has neither `sha256sum` nor `nproc` (GNU coreutils). `make -n` runs
the set-up's rules with a PATH that lacks them, and the set-up stamp must come out as on Linux."""

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCK = PROJECT_ROOT / "requirements" / "lock.txt"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def path_without(tmp_path: Path, hidden: tuple[str, ...]) -> str:
    """A PATH of one folder linking every program of the system's folders but `hidden` (names, or prefixes with *)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for system in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for program in Path(system).glob("*") if Path(system).is_dir() else []:
            name = program.name
            if any(name == h or (h.endswith("*") and name.startswith(h[:-1])) for h in hidden):
                continue
            if not (folder / name).exists():
                (folder / name).symlink_to(program)
    return str(folder)


def make_dry(path: str, *arguments: str) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C"}
    return subprocess.run(["make", "-n", *arguments], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def expected_stamp() -> str:
    digest = hashlib.sha256((PROJECT_ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes()).hexdigest()[:12]
    return f".venv/.installed-{digest}"


@pytest.mark.parametrize("hidden", [("sha256sum", "nproc"), ("sha256sum", "nproc", "python*")],
                         ids=["through python", "through shasum"])
def test_make_setup_needs_neither_sha256sum_nor_nproc(tmp_path, hidden):
    path = path_without(tmp_path, hidden)
    assert shutil.which("sha256sum", path=path) is None and shutil.which("nproc", path=path) is None

    result = make_dry(path, "-B", "setup")  # -B: print every step, as on a machine never set up

    assert result.returncode == 0, result.stderr
    assert "not found" not in result.stderr and "No such file" not in result.stderr, result.stderr
    assert f"touch {expected_stamp()}" in result.stdout  # the same stamp as on Linux: no needless reinstall
    variables = make_dry(path, "-p", "setup").stdout
    assert re.search(r"^CORES := [1-9]\d*$", variables, re.MULTILINE)
    lock_digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    assert f"CHECK_RUNS := runs/check-{lock_digest}-fp32" in variables
