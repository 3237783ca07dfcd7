"""The lock: exact versions of everything the course installs, used by make, conda and Colab alike."""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from utils.apps.colab import SETUP_SCRIPT
from utils.apps.lockfile import COLAB, LOCK, colab_constraints, pins, portable, required_by

ROOT = Path(__file__).resolve().parent.parent
LOCK_TEXT = LOCK.read_text(encoding="utf-8")
PINS = pins(LOCK_TEXT)


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    return requirements


def test_every_requirement_of_pyproject_is_pinned_inside_its_range():
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        assert name in PINS, f"{name} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(PINS[name], prereleases=True), (name, PINS[name], str(requirement))


def test_every_line_of_the_lock_is_an_exact_portable_pin():
    packages = [line for line in LOCK_TEXT.splitlines() if line and not line.startswith((" ", "#"))]

    assert len(packages) == len(PINS) > 100
    for line in packages:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][0-9a-z.]*", line), line  # no URL, no +cpu label
    assert "finetuning-course-llm" not in PINS  # the project itself is installed from the checkout


def test_the_lock_keeps_the_holds():
    holds = [Requirement(line.split("#")[0]) for line in (ROOT / "requirements" / "holds.txt").read_text().splitlines()
             if line.split("#")[0].strip()]

    assert holds
    for hold in holds:
        assert hold.specifier.contains(PINS[canonicalize_name(hold.name)]), hold


def test_this_environment_has_the_locked_versions():
    """A drifted .venv (an upgrade by hand, an old install) fails here, before any notebook runs."""
    drifted = []
    for name, version in PINS.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # locked for another platform or extra, not installed here
        if Version(installed).public != Version(version).public:
            drifted.append(f"{name} {installed} (lock: {version})")

    assert not drifted, "reinstall with `make setup`: " + ", ".join(drifted)
    assert importlib.metadata.version("transformers") == PINS["transformers"]


def test_the_colab_constraints_are_the_lock_without_torch_and_in_sync():
    colab = COLAB.read_text(encoding="utf-8")
    colab_pins = pins(colab)

    assert colab == colab_constraints(LOCK_TEXT), "run `make lock` to rewrite requirements/colab.txt"
    assert "torch" not in colab_pins
    assert colab_pins["transformers"] == PINS["transformers"]
    assert colab_pins["peft"] == PINS["peft"]


def test_what_only_torch_needs_is_left_to_colab_and_what_others_need_is_kept():
    lock = (
        "filelock==3.0\n    # via\n    #   huggingface-hub\n    #   torch\n"
        "huggingface-hub==1.0\n    # via finetuning-course-llm (pyproject.toml)\n"
        "mpmath==1.0\n    # via sympy\n"
        "sympy==1.0\n    # via torch\n"
        "torch==2.13.0+cpu\n    # via\n    #   finetuning-course-llm\n    #   finetuning-course-llm (pyproject.toml)\n"
    )

    assert required_by(lock)["filelock"] == {"huggingface-hub", "torch"}
    assert set(pins(colab_constraints(lock))) == {"filelock", "huggingface-hub"}
    assert "torch==2.13.0\n" in portable(lock)


def test_make_conda_and_colab_install_from_the_lock():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    environment = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_entries = [e for d in environment["dependencies"] if isinstance(d, dict) for e in d["pip"]]

    assert re.search(r"pip install -q -c \$\(LOCK\) -e \"\.\[dev\]\"", makefile)
    assert "LOCK := requirements/lock.txt" in makefile
    assert not re.search(r"pip install -q --upgrade", makefile), "an unpinned upgrade drifts"
    assert "-c requirements/lock.txt" in pip_entries
    assert "requirements/colab.txt" in (ROOT / SETUP_SCRIPT).read_text(encoding="utf-8")  # what the Colab cell runs
