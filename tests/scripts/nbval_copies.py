"""A pytest plugin for nbval: keep each notebook it ran, with the outputs its cells gave.

    PYTHONPATH=tests/scripts python -m pytest --nbval-lax --nbval-current-env -p nbval_copies \
        --nbval-copies-dir runs/executed notebooks/

nbval checks the notebooks but writes nothing; the GPU workflow keeps these copies as artifacts. A
notebook is written after its last cell, or at the cell where it failed, with the outputs so far.
"""

from __future__ import annotations

from pathlib import Path

import nbformat


def pytest_addoption(parser):
    parser.addoption("--nbval-copies-dir", default=None,
                     help="write each notebook nbval runs, with its cells' outputs, into this folder")


def pytest_runtest_teardown(item, nextitem):
    folder = item.config.getoption("nbval_copies_dir")
    notebook = getattr(item.parent, "nb", None)
    if not folder or notebook is None or not hasattr(item, "test_outputs"):
        return
    item.cell.outputs = item.test_outputs or []  # the cell of item.parent.nb: the notebook fills in place
    if nextitem is None or nextitem.parent is not item.parent:
        Path(folder).mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, Path(folder) / Path(str(item.parent.fspath)).name)
