"""The layers of docs/ARCHITECTURE.md, held: imports only go down.

The plumbing (utils/plumbing/) imports nothing else of utils; a teaching module (utils/*.py) imports
no app (utils/apps/); notebooks and solutions import the teaching modules and the few plumbing and
app modules the page names. Every import counts, those inside functions too.
"""

import ast
from pathlib import Path

import nbformat
import pytest

from utils.plumbing.files import PROJECT_ROOT

UTILS = PROJECT_ROOT / "utils"
TEACHING = {f"utils.{path.stem}" for path in UTILS.glob("*.py") if not path.stem.startswith("__")}
# What a learner looks at: where the run's files are, the figures recorded so far, time and memory.
NOTEBOOK_PLUMBING = {"utils.plumbing.files", "utils.plumbing.results", "utils.plumbing.measure"}
# Notebook 05 shows the comparison of every method that `make run`'s report prints, from the same code.
NOTEBOOK_APPS = {"05_qlora": {"utils.apps.benchmark", "utils.apps.report"}}


def utils_imports(source: str) -> set[str]:
    """The utils modules a piece of Python imports: `from utils import course` counts as utils.course."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "utils"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "utils":
            if node.module == "utils":
                found |= {f"utils.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


def notebook_imports(path: Path) -> set[str]:
    """The utils modules a notebook's code cells import (IPython's ! and % lines left out)."""
    cells = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    python = "\n".join(line for cell in cells for line in cell.splitlines() if not line.lstrip().startswith(("!", "%")))
    return utils_imports(python)


def violations(path: Path, imports: set[str], allowed) -> set[tuple[str, str]]:
    relative = str(path.relative_to(PROJECT_ROOT))
    return {(relative, module) for module in imports if not allowed(module)}


def package_violations() -> set[tuple[str, str]]:
    found = set()
    for path in (UTILS / "plumbing").glob("*.py"):
        found |= violations(path, utils_imports(path.read_text(encoding="utf-8")),
                            lambda module: module.startswith("utils.plumbing"))
    for path in UTILS.glob("*.py"):
        if path.name != "__main__.py":  # the entry point of `python -m utils` calls apps.cli
            found |= violations(path, utils_imports(path.read_text(encoding="utf-8")),
                                lambda module: not module.startswith("utils.apps"))
    return found


def test_imports_parse_as_the_page_reads_them():
    source = "from utils import course\nimport utils.plumbing.files\ndef f():\n    from utils.apps.report import x\n"

    assert utils_imports(source) == {"utils.course", "utils.plumbing.files", "utils.apps.report"}
    assert utils_imports("from .files import x\nimport torch\n") == set()


def test_the_plumbing_imports_nothing_above_it_and_teaching_modules_import_no_app():
    assert package_violations() == set()


NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb")) + sorted((PROJECT_ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebooks_and_solutions_import_what_the_page_allows(path):
    stem = path.stem.removesuffix("_solutions")
    allowed = TEACHING | {"utils"} | NOTEBOOK_PLUMBING | NOTEBOOK_APPS.get(stem, set())

    assert violations(path, notebook_imports(path), allowed.__contains__) == set()
