"""The first cell of every notebook: in Google Colab it fetches and installs the course; elsewhere it does nothing.

The repository's address is kept in one place, `pyproject.toml` ([project.urls] Repository);
`python -m utils sync-colab` writes the cell built from it at the top of each notebook.
The cell is plain Python (no `!` or `%` magics) and runs before `utils` can be imported.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path

import nbformat

from utils.files import PROJECT_ROOT, write_text_atomic

CELL_ID = "colab-setup"
COLAB_FOLDER = "/content/finetuning-course"  # where the cell clones the course in Colab

CELL_TEMPLATE = '''\
# In Google Colab: fetch the course and install it (this cell does nothing anywhere else).
# Your Hugging Face token, if you need one, goes in Colab's secrets as HF_TOKEN, never in a cell.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    if not os.path.isdir("{folder}"):
        subprocess.run(["git", "clone", "--depth", "1", "{url}", "{folder}"], check=True)
    # The course's locked versions of everything but torch, which stays Colab's own build.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", "{folder}/requirements/colab.txt",
                    "-e", "{folder}[quantization]"], check=True)
    sys.path.insert(0, "{folder}")  # importable now, without restarting the runtime
    os.chdir("{folder}/notebooks")'''


def repository_url(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> str:
    """The course's repository address, from pyproject.toml's [project.urls] Repository."""
    with open(pyproject, "rb") as stream:
        return tomllib.load(stream)["project"]["urls"]["Repository"]


def colab_cell_source(url: str | None = None) -> str:
    """The source of the first cell, cloning `url` (default: the repository in pyproject.toml)."""
    return CELL_TEMPLATE.format(url=url or repository_url(), folder=COLAB_FOLDER)


def colab_cell(url: str | None = None) -> nbformat.NotebookNode:
    """The first cell as a notebook cell: id "colab-setup", no outputs, never executed."""
    return nbformat.v4.new_code_cell(colab_cell_source(url), id=CELL_ID)


def sync_colab_cell(path: str | Path, url: str | None = None) -> bool:
    """Put the Colab cell first in the notebook at `path` (insert it, or update and move it there).

    Idempotent: returns False and leaves the file untouched when it already starts with the cell.
    """
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    wanted = colab_cell(url)
    first = notebook.cells[0] if notebook.cells else None
    if (first is not None and first.get("id") == CELL_ID and first.cell_type == "code"
            and first.source == wanted.source and not first.outputs and first.execution_count is None):
        return False
    notebook.cells = [wanted, *(cell for cell in notebook.cells if cell.get("id") != CELL_ID)]
    nbformat.validate(notebook)
    write_text_atomic(path, nbformat.writes(notebook) + "\n")
    return True


def sync_colab_cells(paths: Iterable[str | Path], url: str | None = None) -> list[Path]:
    """`sync_colab_cell` for every notebook in `paths`; the notebooks that changed."""
    url = url or repository_url()
    return [Path(path) for path in paths if sync_colab_cell(path, url)]
