"""Out of memory, explained: the error is forced (monkeypatch) where training, generation and scoring
would meet it, and must come back as one paragraph naming the step and the settings that need less,
with nothing marked finished. And the warning before a notebook starts on a machine with less free
memory than the notebook used in the reference run."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer

import utils.plumbing.out_of_memory
from utils.apps.cli import main
from utils.plumbing.out_of_memory import OutOfMemory, explained_out_of_memory, is_out_of_memory, low_memory_warning
from utils.profiles import get_profile, memory_sizes

CUDA_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.63 GiB of which "
                "1.10 GiB is free.")
CPU_MESSAGE = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 4294967296 bytes."


@pytest.mark.parametrize("error, asked", [
    (torch.cuda.OutOfMemoryError(CUDA_MESSAGE), "2.00 GiB"),
    (RuntimeError(CPU_MESSAGE), "4.00 GiB"),
    (MemoryError(), ""),
])
def test_every_kind_of_out_of_memory_becomes_one_paragraph_naming_step_need_and_settings(error, asked):
    with pytest.raises(OutOfMemory) as raised, explained_out_of_memory("training full", memory_sizes(get_profile("colab"))):
        raise error

    message = str(raised.value)
    assert message.startswith("Out of memory in ") and "while training full" in message
    assert (f"one more allocation of {asked} failed" in message) == bool(asked)
    assert ("the GPU" in message) == isinstance(error, torch.cuda.OutOfMemoryError)
    assert "Profile colab trains batches of 8" in message and "(estimated)" in message
    for setting in ("COURSE_PROFILE=offline", "COURSE_SMOKE=1"):
        assert setting in message
    assert "\n" not in message and raised.value.__suppress_context__  # one paragraph, no chained traceback


def test_other_errors_pass_unchanged():
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(ValueError, match="not memory"), explained_out_of_memory("generating"):
        raise ValueError("not memory")


def test_training_out_of_memory_exits_2_with_the_paragraph_and_marks_nothing_finished(
        monkeypatch, capsys, isolated_runs, one_thread):
    def no_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError(CUDA_MESSAGE)

    monkeypatch.setattr(Trainer, "train", no_memory)
    monkeypatch.setenv("COURSE_PROFILE", "tiny")

    code = main(["train", "full"])

    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert captured.err.startswith("error: Out of memory in the GPU while training full")
    assert not list(isolated_runs.rglob("finished.json")) and not list(isolated_runs.rglob("final"))


def test_generation_out_of_memory_names_generating(tiny_model_and_tokenizer, monkeypatch):
    from utils.generation import generate

    model, tokenizer = tiny_model_and_tokenizer

    def no_memory(*args, **kwargs):
        raise RuntimeError(CPU_MESSAGE)

    monkeypatch.setattr(model, "generate", no_memory)
    with pytest.raises(OutOfMemory, match="Out of memory in the computer's RAM while generating"):
        generate(model, tokenizer, ["Summarize: hello"], progress=False)


def test_scoring_out_of_memory_names_the_perplexity(monkeypatch):
    import utils.evaluation
    from utils.data import load_profile_data
    from utils.models import load_model_and_tokenizer

    profile = get_profile("tiny")
    model, tokenizer = load_model_and_tokenizer(profile)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(utils.evaluation, "perplexity", no_memory)
    with pytest.raises(OutOfMemory, match="while scoring perplexity.*Profile tiny"):
        utils.evaluation.split_perplexity(model, tokenizer, profile, load_profile_data(profile)["test"])


# --- a learner's RAM, before a notebook starts ---------------------------------------------------


def write_reference_run(path, peak_ram_mb):
    path.write_text(json.dumps({"profile": "offline", "notebooks": {"03_lora": {"seconds": 300.0,
                                                                                "peak_ram_mb": peak_ram_mb}}}))
    return path


def test_less_free_memory_than_the_reference_runs_peak_warns_saying_what_to_close(tmp_path):
    run = write_reference_run(tmp_path / "run.json", 6000)

    warning = low_memory_warning("03_lora", "offline", available_mb=3000, path=run)

    assert "used up to 5.9 GB of RAM in the reference run" in warning and "2.9 GB free now" in warning
    assert "Shut Down Kernel" in warning and "COURSE_SMOKE=1" in warning
    assert low_memory_warning("03_lora", "offline", available_mb=8000, path=run) is None  # it fits


def test_no_warning_where_nothing_was_measured(tmp_path):
    run = write_reference_run(tmp_path / "run.json", 6000)

    assert low_memory_warning("03_lora", "colab", available_mb=10, path=run) is None  # another profile
    assert low_memory_warning("09_grpo", "offline", available_mb=10, path=run) is None  # a notebook it did not run
    assert low_memory_warning("03_lora", "offline", available_mb=10, path=tmp_path / "absent.json") is None
    (tmp_path / "broken.json").write_text("{")
    assert low_memory_warning("03_lora", "offline", available_mb=10, path=tmp_path / "broken.json") is None


def test_course_start_prints_the_warning(tmp_path, monkeypatch, capsys):
    import psutil

    from utils import course

    monkeypatch.setattr(utils.plumbing.out_of_memory, "REFERENCE_RUN", write_reference_run(tmp_path / "run.json", 6000))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2 * 2**30))
    monkeypatch.setenv("COURSE_PROFILE", "offline")

    course.start("03_lora")

    assert "Memory  : this notebook used up to 5.9 GB" in capsys.readouterr().out
