"""Test settings: no progress bars, no network, results and checkpoints in a temporary folder."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# An empty Hugging Face cache of the tests' own, whatever this machine's cache holds (set before
# huggingface_hub is imported: it reads the location once).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="course-tests-hf-home-")
os.environ.pop("COURSE_PROFILE", None)


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch):
    """Every test writes runs/ (results, reports, checkpoints) under its own temporary folder, and generates
    afresh unless it asks for reuse itself (`course.start` turns reuse on for the rest of the process)."""
    from utils.generation import reuse_generations_in

    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "runs"))
    reuse_generations_in(None)
    yield tmp_path / "runs"
    reuse_generations_in(None)


@pytest.fixture(params=["tiny", "tiny-causal"])
def tiny_profile(request):
    """Both tiny profiles: an encoder-decoder and a decoder-only model."""
    from utils.profiles import get_profile

    return get_profile(request.param)


@pytest.fixture
def tiny_model_and_tokenizer(tiny_profile):
    from utils.models import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_profile)


@pytest.fixture
def one_thread():
    """Tiny models train as fast on one thread, far faster when other work shares the CPU, and always alike."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_notebook_with_nbval(notebook, environ: dict, runs_dir) -> None:
    """Run `notebook` top to bottom under nbval with `environ` added; fail with its output's tail.

    nbval runs each notebook in this Python (`--nbval-current-env`), not in the kernel its metadata
    names: the course kernel (`make lab`) need not be registered, and a `python3` kernelspec
    elsewhere on the Jupyter path (a user-wide one, say) cannot swap in another interpreter.
    """
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, **environ, "COURSE_RUNS_DIR": str(runs_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         str(notebook)],
        cwd=Path(notebook).parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
