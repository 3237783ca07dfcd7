"""Every notebook runs top to bottom with nbval in the tiny decoder-only profile (seconds per notebook),
and then its worked solution in the same runs folder, as a learner opens it after the notebook.

The encoder-decoder side runs in tests/test_online_profiles.py: the `colab` and `gpu` profiles at
test sizes (COURSE_SMOKE=1) against stand-ins of FLAN-T5-base and DialogSum. At those sizes they
are the `tiny` profile's run with a model whose structure is FLAN-T5's, so `tiny` is not run again
(the solutions run in `tiny` on their own, tests/test_solutions.py).
"""

import json
from pathlib import Path

import pytest
from conftest import run_notebook_with_nbval
from test_solutions import TRAININGS, unfinished_trainings

from utils.profiles import get_profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def finished_record(folder: Path) -> tuple[bytes, int] | None:
    """A finished training's record and when it was written (None when it did not finish)."""
    finished = folder / "finished.json"
    return (finished.read_bytes(), finished.stat().st_mtime_ns) if finished.exists() else None


# `make test` runs 02 and its solution; the other notebooks are `long` (`make test-long`, CI).
@pytest.mark.parametrize("notebook", [pytest.param(p, id=p.stem, marks=[] if p.stem == "02_full_fine_tuning"
                                                   else [pytest.mark.long]) for p in NOTEBOOKS])
def test_notebook_runs_with_nbval_in_the_tiny_decoder_only_profile_and_then_its_solution_reusing_it(
        notebook, tmp_path):
    runs, profile = tmp_path / "runs", "tiny-causal"
    run_notebook_with_nbval(notebook, {"COURSE_PROFILE": profile}, runs)

    results = runs / profile / "results.json"
    assert results.exists(), "the notebook recorded no results"
    recorded = results.read_bytes()
    solution = ROOT / "solutions" / f"{notebook.stem}_solutions.ipynb"
    own = TRAININGS.get(solution.stem, lambda p: [])(get_profile(profile))[:1]  # the notebook's own training
    trained = [finished_record(runs / profile / "checkpoints" / name) for name in own]

    run_notebook_with_nbval(solution, {"COURSE_PROFILE": profile}, runs)

    assert [finished_record(runs / profile / "checkpoints" / name) for name in own] == trained, \
        "the solution trained the notebook's model again"
    assert results.read_bytes() == recorded and json.loads(recorded), "the solution changed the notebook's results"
    assert unfinished_trainings(solution, profile, runs) == []
