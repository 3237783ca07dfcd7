"""Every notebook starts with the Colab cell built from pyproject.toml's repository address: in Colab it
fetches and installs the course, anywhere else it does nothing.

(Notebooks 06 and 07 fail the first test until `python -m utils sync-colab` is run on them.)
"""

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest

from utils.__main__ import main
from utils.colab import CELL_ID, COLAB_FOLDER, colab_cell_source, repository_url, sync_colab_cell

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
URL = "https://github.com/example/course"


def pyproject_url():
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_colab_cell_for_the_repository_in_pyproject(notebook):
    first = nbformat.read(notebook, as_version=4).cells[0]

    assert first.cell_type == "code" and first.id == CELL_ID
    assert first.source == colab_cell_source(pyproject_url())
    assert pyproject_url() in first.source
    assert first.outputs == [] and first.execution_count is None


def test_the_repository_url_is_read_from_pyproject():
    assert repository_url() == pyproject_url()
    assert repository_url().startswith("https://")


@pytest.fixture
def recorded(monkeypatch):
    """Run the cell's source here with subprocess.run and os.chdir recorded instead of done."""
    actions = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: actions.append(("run", command, kwargs)))
    monkeypatch.setattr(os, "chdir", lambda folder: actions.append(("chdir", folder)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return actions


def test_outside_colab_the_cell_does_nothing(recorded, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    path_before = list(sys.path)

    exec(compile(colab_cell_source(URL), "colab-setup", "exec"), {})  # noqa: S102 (the cell, as Jupyter runs it)

    assert recorded == []
    assert sys.path == path_before


def test_in_colab_the_cell_clones_installs_and_imports_the_course(recorded, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))

    exec(compile(colab_cell_source(URL), "colab-setup", "exec"), {})  # noqa: S102 (the cell, as Jupyter runs it)

    clone, install, chdir = recorded
    assert clone[1] == ["git", "clone", "--depth", "1", URL, COLAB_FOLDER]
    assert install[1][:2] == [sys.executable, "-m"] and install[1][-1] == f"{COLAB_FOLDER}[quantization]"
    assert install[2]["check"] is True
    assert chdir == ("chdir", f"{COLAB_FOLDER}/notebooks")
    assert sys.path[0] == COLAB_FOLDER  # the data/ folder is found beside utils/, in the clone


def test_the_cell_is_plain_python_without_magics_or_imports_of_the_course():
    tree = ast.parse(colab_cell_source(URL))

    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"sys", "os", "subprocess"}
    assert not any(line.lstrip().startswith(("%", "!")) for line in colab_cell_source(URL).splitlines())


@pytest.fixture
def notebook_copy(tmp_path):
    """A course notebook as it was before the Colab cell: its other cells unchanged."""
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    notebook.cells = [cell for cell in notebook.cells if cell.get("id") != CELL_ID]
    path = tmp_path / NOTEBOOKS[0].name
    nbformat.write(notebook, path)
    return path, [cell.id for cell in notebook.cells]


def test_sync_inserts_the_cell_first_and_keeps_every_other_cell(notebook_copy):
    path, ids = notebook_copy

    assert sync_colab_cell(path, URL) is True

    cells = nbformat.read(path, as_version=4).cells
    assert [cell.id for cell in cells] == [CELL_ID, *ids]
    assert cells[0].source == colab_cell_source(URL)


def test_sync_twice_changes_nothing_the_second_time(notebook_copy):
    path, _ = notebook_copy
    sync_colab_cell(path, URL)
    written = path.read_bytes()

    assert sync_colab_cell(path, URL) is False

    assert path.read_bytes() == written


def test_sync_updates_a_cell_of_another_url_or_with_outputs_in_place(notebook_copy):
    path, ids = notebook_copy
    sync_colab_cell(path, "https://github.com/old/place")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[0].execution_count = 3
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", text="Cloning...")]
    nbformat.write(notebook, path)

    assert sync_colab_cell(path, URL) is True

    cells = nbformat.read(path, as_version=4).cells
    assert [cell.id for cell in cells] == [CELL_ID, *ids]
    assert URL in cells[0].source and "old/place" not in cells[0].source
    assert cells[0].outputs == [] and cells[0].execution_count is None


def test_sync_colab_command_syncs_the_notebooks_named(notebook_copy, tmp_path, capsys):
    path, _ = notebook_copy
    other = tmp_path / "other.ipynb"
    shutil.copy(path, other)

    assert main(["sync-colab", str(path), str(other)]) == 0

    assert "updated in 2 of 2 notebook(s)" in capsys.readouterr().out
    for notebook in (path, other):
        assert nbformat.read(notebook, as_version=4).cells[0].source == colab_cell_source(pyproject_url())
