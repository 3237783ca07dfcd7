"""The Colab side of every notebook: its set-up cell, second after the title, which in Google Colab
fetches the course and runs utils/apps/colab_setup.py from the clone (and does nothing anywhere
else), and an "Open in Colab" badge in its title and in the README.

The repository's address is kept in one place, `pyproject.toml` ([project.urls] Repository);
`python -m utils sync-colab` writes the cell and the badges built from it. The cell is plain
Python (no `!` or `%` magics), at most MAX_CELL_LINES lines: it clones the course and hands over to
the set-up script (install with the Colab pins, offline model wheels, Drive, sys.path, folder),
which runs in the notebook's own namespace before `utils` can be imported. A runtime without the
GPU its profile needs is told what to do by `course.start`.

Which course the cell installs: the revision written into it as `COURSE_REVISION`, a tag or a
branch that `git clone --branch` accepts. `sync-colab` writes the tag of the commit it runs on
(`git describe --tags --exact-match`), else `main`, or what `--revision` says; the badges link to
the notebooks of that same revision. So the notebooks of a release install that release: run
`python -m utils sync-colab --revision v1.2`, commit, tag the commit `v1.2`, and
`python -m utils sync-colab` on the next commit of main (tests/test_colab.py fails until the cells
say the tag on the tagged commit, and `main` elsewhere). A cell whose revision cannot be cloned
(a tag not pushed yet) installs main instead, and the set-up script says so.

Settings at the top of the cell, for the learner to change before running it: KEEP_RUNS_ON_DRIVE
(True: mount Google Drive and keep results and checkpoints there, as $COURSE_RUNS_DIR, so they
outlive the runtime), COURSE_PROFILE ("offline" runs the course on a CPU-only runtime).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Iterable
from pathlib import Path

import nbformat

from utils.apps.colab_setup import COLAB_FOLDER
from utils.plumbing.files import PROJECT_ROOT, write_text_atomic

CELL_ID = "colab-setup"
DEFAULT_REVISION = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE = re.compile(r"^\[!\[Open in Colab\]\([^)]*\)\]\([^)]*\)$")
SETUP_SCRIPT = "utils/apps/colab_setup.py"  # in the clone; the cell runs it
MAX_CELL_LINES = 8

CELL_TEMPLATE = '''\
KEEP_RUNS_ON_DRIVE = False  # True: keep results and checkpoints on your Google Drive (they outlive the runtime)
COURSE_PROFILE = ""  # "" picks colab (a GPU runtime); "offline" runs on a CPU runtime
COURSE_REVISION = "{revision}"  # the version of the course this notebook belongs to
import subprocess, sys
if "google.colab" in sys.modules:  # in Google Colab: fetch the course and set it up (elsewhere: nothing to do)
    url, folder = "{url}", "{folder}"
    subprocess.run(f"test -d {{folder}} || git clone -q --depth 1 -b {{COURSE_REVISION}} {{url}} {{folder}} || git clone -q --depth 1 {{url}} {{folder}}", shell=True)
    exec(open(f"{{folder}}/{script}").read())  # installs it, mounts Drive if asked, makes it importable'''


def repository_url(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> str:
    """The course's repository address, from pyproject.toml's [project.urls] Repository."""
    with open(pyproject, "rb") as stream:
        return tomllib.load(stream)["project"]["urls"]["Repository"]


def github_repository(url: str) -> str:
    """"owner/repo" of a GitHub address such as https://github.com/owner/repo(.git)."""
    found = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", url)
    if not found:
        raise ValueError(f"Colab opens notebooks from GitHub; {url!r} is not a GitHub repository address")
    return f"{found.group(1)}/{found.group(2)}"


def course_revision(root: Path = PROJECT_ROOT) -> str:
    """The tag of the commit checked out in `root`, or "main" (not exactly at a tag, or no git)."""
    try:
        described = subprocess.run(["git", "describe", "--tags", "--exact-match", "HEAD"], cwd=root,
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_REVISION
    return described.stdout.strip() if described.returncode == 0 and described.stdout.strip() else DEFAULT_REVISION


def colab_cell_source(url: str | None = None, revision: str | None = None, folder: str = COLAB_FOLDER) -> str:
    """The source of the set-up cell, cloning `revision` (default: course_revision()) of `url`
    (default: the repository in pyproject.toml) into `folder`, then running its set-up script."""
    return CELL_TEMPLATE.format(url=url or repository_url(), folder=folder, revision=revision or course_revision(),
                                script=SETUP_SCRIPT)


def colab_cell(url: str | None = None, revision: str | None = None) -> nbformat.NotebookNode:
    """The set-up cell as a notebook cell: id "colab-setup", no outputs, never executed."""
    return nbformat.v4.new_code_cell(colab_cell_source(url, revision), id=CELL_ID)


def colab_link(notebook_file: str, url: str | None = None, revision: str | None = None) -> str:
    """The address that opens notebooks/`notebook_file` of `revision` in Colab."""
    repository, revision = github_repository(url or repository_url()), revision or course_revision()
    return f"https://colab.research.google.com/github/{repository}/blob/{revision}/notebooks/{notebook_file}"


def colab_badge(notebook_file: str, url: str | None = None, revision: str | None = None) -> str:
    """The "Open in Colab" badge, in Markdown, for notebooks/`notebook_file`."""
    return f"[![Open in Colab]({BADGE_IMAGE})]({colab_link(notebook_file, url, revision)})"


def title_with_badge(source: str, badge: str) -> str:
    """A title cell's Markdown with `badge` on its own line right below the heading (replacing an old badge)."""
    heading, _, rest = source.partition("\n")
    rest = rest.lstrip("\n")
    first_line, _, after = rest.partition("\n")
    if BADGE.match(first_line):
        rest = after.lstrip("\n")
    return "\n\n".join(part for part in (heading, badge, rest) if part)


def _title_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            return cell
    raise ValueError("the notebook has no title cell (a Markdown cell that starts with '# ')")


def sync_colab_cell(path: str | Path, url: str | None = None, revision: str | None = None) -> bool:
    """Put the Colab cell right after the title cell of the notebook at `path` (insert it, or update and move
    it there, from the first position of older notebooks too), and the badge below its title.

    Idempotent: returns False and leaves the file untouched when both are already as they should be.
    """
    path = Path(path)
    url, revision = url or repository_url(), revision or course_revision()
    notebook = nbformat.read(path, as_version=4)
    wanted = colab_cell(url, revision)
    title = _title_cell(notebook)
    titled = title_with_badge(title.source, colab_badge(path.name, url, revision))
    second = notebook.cells[1] if len(notebook.cells) > 1 else None
    if (notebook.cells[0] is title and second is not None and second.get("id") == CELL_ID
            and second.cell_type == "code" and second.source == wanted.source and not second.outputs
            and second.execution_count is None and title.source == titled):
        return False
    title.source = titled
    others = [cell for cell in notebook.cells if cell.get("id") != CELL_ID and cell is not title]
    notebook.cells = [title, wanted, *others]
    nbformat.validate(notebook)
    write_text_atomic(path, nbformat.writes(notebook) + "\n")
    return True


def sync_colab_cells(paths: Iterable[str | Path], url: str | None = None, revision: str | None = None) -> list[Path]:
    """`sync_colab_cell` for every notebook in `paths`; the notebooks that changed."""
    url, revision = url or repository_url(), revision or course_revision()
    return [Path(path) for path in paths if sync_colab_cell(path, url, revision)]


def readme_with_badges(text: str, url: str | None = None, revision: str | None = None) -> str:
    """The README with a Colab badge at the end of each row of its notebook table (| `01_x` | ... | badge |)."""
    url, revision = url or repository_url(), revision or course_revision()
    row = re.compile(r"^\| `(\d\d_\w+)` \| ([^|]*?) \|(?: [^|]* \|)?$")

    def with_badge(line: str) -> str:
        found = row.match(line)
        if not found:
            return line
        name, teaches = found.groups()
        return f"| `{name}` | {teaches} | {colab_badge(name + '.ipynb', url, revision)} |"

    return "\n".join(with_badge(line) for line in text.split("\n"))


def sync_readme(path: Path = PROJECT_ROOT / "README.md", url: str | None = None, revision: str | None = None) -> bool:
    """Write the Colab badges into the README's notebook table; False when they were already there."""
    text = path.read_text(encoding="utf-8")
    synced = readme_with_badges(text, url, revision)
    if synced == text:
        return False
    write_text_atomic(path, synced)
    return True
