"""Every notebook runs top to bottom with nbval in the tiny decoder-only profile (seconds per notebook).

The encoder-decoder side runs in tests/test_online_profiles.py: the `colab` and `gpu` profiles at
test sizes (COURSE_SMOKE=1) against stand-ins of FLAN-T5-base and DialogSum. At those sizes they
are the `tiny` profile's run with a model whose structure is FLAN-T5's, so `tiny` is not run again.
"""

from pathlib import Path

import pytest
from conftest import run_notebook_with_nbval

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_with_nbval_in_the_tiny_decoder_only_profile(notebook, tmp_path):
    run_notebook_with_nbval(notebook, {"COURSE_PROFILE": "tiny-causal"}, tmp_path / "runs")

    assert (tmp_path / "runs" / "tiny-causal" / "results.json").exists(), "the notebook recorded no results"
