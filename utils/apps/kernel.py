"""The course's Jupyter kernel: the Python of `.venv`, under a name of its own.

`make lab` runs `python -m utils.apps.kernel`, which registers the kernel inside the environment
(like `ipykernel install --sys-prefix`), where the environment's own `jupyter` finds it, and
JupyterLab then opens every notebook with it: the notebooks' metadata name this kernel.

The headless tools never depend on it being registered: `make run` (utils/apps/runner.py) asks for
the `python3` kernel, which jupyter_client always resolves to the Python running it, and the
nbval tests run the notebooks in the pytest process's own environment (`--nbval-current-env`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from utils.plumbing.files import write_text_atomic

KERNEL_NAME = "finetuning-course"
KERNEL_DISPLAY_NAME = "Python (fine-tuning course)"


def install_course_kernel(prefix: str | Path = sys.prefix) -> Path:
    """Register this Python as the course kernel under `prefix`/share/jupyter/kernels; its folder."""
    from ipykernel.kernelspec import install

    return Path(install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME, prefix=str(prefix)))


def course_kernelspec() -> dict[str, str]:
    """The kernelspec entry of a notebook's metadata that names the course kernel."""
    return {"name": KERNEL_NAME, "display_name": KERNEL_DISPLAY_NAME, "language": "python"}


def use_course_kernel(path: str | Path) -> bool:
    """Make the notebook at `path` name the course kernel; False (file untouched) when it already does."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    if notebook.metadata.get("kernelspec") == course_kernelspec():
        return False
    notebook.metadata["kernelspec"] = course_kernelspec()
    nbformat.validate(notebook)
    write_text_atomic(path, nbformat.writes(notebook) + "\n")
    return True


def main() -> int:
    folder = install_course_kernel()
    print(f"Jupyter kernel {KERNEL_NAME!r} ({KERNEL_DISPLAY_NAME}) registered in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
