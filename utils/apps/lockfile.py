"""The lock: exact versions of everything the course installs (requirements/lock.txt), and its Colab variant.

`make lock` resolves pyproject.toml's ranges with pip-tools into requirements/lock.txt, then runs
this module, which makes the lock portable and writes requirements/colab.txt:

- a local version label of this machine's build (torch 2.13.0+cpu) becomes the plain version, so
  a GPU machine gets the CUDA build of the same release;
- Colab keeps its own torch: colab.txt is the lock without torch and without what only torch needs.

    .venv/bin/python -m utils.apps.lockfile
"""

from __future__ import annotations

import re

from packaging.utils import canonicalize_name

from utils.plumbing.files import PROJECT_ROOT, write_text_atomic

LOCK = PROJECT_ROOT / "requirements" / "lock.txt"
COLAB = PROJECT_ROOT / "requirements" / "colab.txt"
COLAB_KEEPS = {"torch"}  # Colab's preinstalled build, matched to its CUDA
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
COLAB_HEADER = (
    "# The lock (requirements/lock.txt) without torch and what only torch needs: Colab keeps its own torch.\n"
    "# Written by `make lock` (python -m utils.apps.lockfile); do not edit.\n"
)


def pins(lock_text: str) -> dict[str, str]:
    """{canonical name: exact version} of every `name==version` line."""
    found = {}
    for line in lock_text.splitlines():
        match = PIN.match(line)
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def required_by(lock_text: str) -> dict[str, set[str]]:
    """{package: the packages that need it}, from pip-compile's `# via` notes (the project itself excluded)."""
    needs: dict[str, set[str]] = {}
    current = None
    for line in lock_text.splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            needs[current] = set()
            line = line[match.end():]
        if current is None or "#" not in line:
            continue
        note = line.split("#", 1)[1].strip().removeprefix("via").strip()
        if note and not note.startswith("-r") and "(pyproject.toml)" not in note:
            needs[current].add(canonicalize_name(note.split()[0]))
    return needs


def portable(lock_text: str) -> str:
    """The lock with local version labels dropped (torch==2.13.0+cpu -> torch==2.13.0)."""
    return re.sub(r"^([A-Za-z0-9][A-Za-z0-9._-]*==[^\s+;#]+)\+[A-Za-z0-9.]+", r"\1", lock_text, flags=re.M)


def colab_constraints(lock_text: str) -> str:
    """The lock's pins minus torch and every package that only torch (or such a package) needs."""
    needs = required_by(lock_text)
    project = canonicalize_name("finetuning-course-llm")
    left_out = set(COLAB_KEEPS)
    changed = True
    while changed:
        changed = False
        for name, users in needs.items():
            if name not in left_out and users and users - {project} <= left_out and project not in users:
                left_out.add(name)
                changed = True
    kept = {name: version for name, version in pins(lock_text).items() if name not in left_out}
    return COLAB_HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(kept.items()))


def main() -> None:
    text = portable(LOCK.read_text(encoding="utf-8"))
    write_text_atomic(LOCK, text)
    write_text_atomic(COLAB, colab_constraints(text))
    print(f"{LOCK.relative_to(PROJECT_ROOT)}: {len(pins(text))} pins; "
          f"{COLAB.relative_to(PROJECT_ROOT)}: {len(pins(COLAB.read_text(encoding='utf-8')))} (Colab keeps its torch)")


if __name__ == "__main__":
    main()
