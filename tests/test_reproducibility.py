"""The same profile and seed on the same machine give the same numbers, and every report says what produced them."""

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
import transformers

from utils.apps.cli import main
from utils.plumbing.results import record_result

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "scripts" / "train_method.py"


# The encoder-decoder is `long` (`make test-long`, CI): one seeding mechanism serves both families.
@pytest.mark.parametrize("profile", [pytest.param("tiny", marks=pytest.mark.long), "tiny-causal"])
def test_training_and_evaluating_twice_in_separate_processes_gives_identical_losses_weights_and_rouge(
        profile, tmp_path):
    """Two runs at once (2 cores), each in its own process and runs folder: fine-tune, then summarize the test split."""
    runs = []
    for name in ("first", "second"):
        env = {**os.environ, "COURSE_PROFILE": profile, "COURSE_RUNS_DIR": str(tmp_path / name)}
        runs.append(subprocess.Popen([sys.executable, str(SCRIPT), "full", "--evaluate"], cwd=PROJECT_ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs[0][-3000:] + outputs[1][-3000:]

    first, second = (json.loads(output.strip().splitlines()[-1]) for output in outputs)

    assert first["reused"] is False and second["reused"] is False  # both trained: nothing shared between them
    assert len(first["train_losses"]) == 8 and first["rouge"]
    assert first["train_losses"] == second["train_losses"]
    assert first["eval_losses"] == second["eval_losses"]
    assert first["weights"] == second["weights"]
    assert first["predictions"] == second["predictions"]
    assert first["rouge"] == second["rouge"]


def report_settings(path):
    """The `| setting | value |` rows at the top of REPORT.md, as a dict."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and line.count("|") == 3:
            key, value = (cell.strip() for cell in line.strip("|").split("|"))
            rows[key] = value
    return rows


def test_the_report_records_profile_seed_device_data_and_library_versions(monkeypatch, capsys, isolated_runs):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    record_result("tiny", "02_full_fine_tuning", "full", "tiny:t5", rouge1=0.25)

    assert main(["report"]) == 0

    settings = report_settings(isolated_runs / "tiny" / "REPORT.md")
    assert settings["profile"] == "tiny" and settings["seed"] == "42" and settings["data"] == "bundled"
    assert settings["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert settings["python"] == platform.python_version()
    assert settings["torch"] == torch.__version__
    assert settings["transformers"] == transformers.__version__
    assert settings["peft"] == peft.__version__
    for package in ("datasets", "accelerate", "trl", "bitsandbytes"):
        assert settings[package] == importlib.metadata.version(package)


def test_a_report_of_your_own_data_names_that_data(monkeypatch, isolated_runs, tmp_path):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "calls.jsonl"))

    assert main(["report"]) == 0

    settings = report_settings(isolated_runs / "tiny-calls" / "REPORT.md")
    assert settings["data"] == str(tmp_path / "calls.jsonl") and settings["profile"] == "tiny"
