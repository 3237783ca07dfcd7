"""Every notebook runs top to bottom with nbval in both tiny profiles (seconds per notebook).

nbval runs each notebook in this Python (`--nbval-current-env`), not in the kernel its metadata
names: the course kernel (`make lab`) need not be registered, and a `python3` kernelspec
elsewhere on the Jupyter path (a user-wide one, say) cannot swap in another interpreter.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("profile", ["tiny", "tiny-causal"])
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_with_nbval(notebook, profile, tmp_path):
    env = {**os.environ, "COURSE_PROFILE": profile, "COURSE_RUNS_DIR": str(tmp_path / "runs")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         str(notebook)],
        cwd=notebook.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert (tmp_path / "runs" / profile / "results.json").exists(), "the notebook recorded no results"
