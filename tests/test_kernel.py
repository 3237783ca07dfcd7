"""The course's Jupyter kernel: registered by `make lab` in .venv, named by every notebook."""

import json
import sys
from pathlib import Path

import nbformat
import pytest

from utils.apps.colab import CELL_ID
from utils.apps.kernel import (
    KERNEL_DISPLAY_NAME,
    KERNEL_NAME,
    course_kernelspec,
    install_course_kernel,
    use_course_kernel,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_opens_with_the_course_kernel_and_is_stored_without_outputs(notebook):
    stored = nbformat.read(notebook, as_version=4)

    assert stored.metadata.kernelspec == {"name": KERNEL_NAME, "display_name": KERNEL_DISPLAY_NAME,
                                          "language": "python"}, "run `python -m utils sync-colab`"
    assert stored.cells[1].id == CELL_ID  # after the title
    for cell in stored.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert "NBVAL_IGNORE_OUTPUT" not in cell.source  # nbval runs with --nbval-lax: nothing is compared


def test_the_kernel_is_this_python_under_the_course_name(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))

    folder = install_course_kernel(prefix=tmp_path)

    assert folder == tmp_path / "share" / "jupyter" / "kernels" / KERNEL_NAME
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["display_name"] == KERNEL_DISPLAY_NAME
    assert spec["argv"][0] == sys.executable and "ipykernel_launcher" in spec["argv"]
    assert "curve" in spec["metadata"]["supported_encryption"]  # what make lab's encrypted kernels need


def test_naming_the_kernel_changes_a_notebook_once_and_keeps_its_cells(tmp_path):
    path = tmp_path / "notebook.ipynb"
    cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("1 + 1")]
    python3 = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": python3}), path)

    assert use_course_kernel(path) is True
    written = path.read_bytes()
    assert use_course_kernel(path) is False

    assert path.read_bytes() == written
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata.kernelspec == course_kernelspec()
    assert [cell.source for cell in notebook.cells] == ["# Title", "1 + 1"]


def test_make_lab_registers_the_kernel_and_opens_the_notebooks_folder():
    makefile = (ROOT / "Makefile").read_text()

    assert f"KERNEL_SPEC := $(VENV)/share/jupyter/kernels/{KERNEL_NAME}/kernel.json" in makefile
    assert "lab: $(KERNEL_SPEC)" in makefile and "$(KERNEL_SPEC): $(STAMP)" in makefile
    assert "$(VENV)/bin/jupyter lab" in makefile and "notebooks/ $(LAB_ARGS)" in makefile


def test_every_nbval_run_uses_this_environment_not_the_kernel_the_notebooks_name():
    """Wherever nbval runs the notebooks (tests, workflows), the course kernel need not be registered."""
    places = [ROOT / "tests" / "conftest.py", ROOT / "bench" / "gpu_check.py",
              *sorted((ROOT / ".github" / "workflows").glob("*.yml"))]
    runs = [(path.name, line) for path in places for line in path.read_text().splitlines() if '--nbval-lax' in line]

    assert {"conftest.py", "gpu_check.py"} <= {name for name, _ in runs}  # the tests' runs and the GPU check's
    for name, line in runs:
        assert "--nbval-current-env" in line, f"{name}: {line.strip()}"
