"""`python -m utils train` on two CPU processes (DDP over gloo) trains as one process does with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).parent / "accelerate"


def train_command(runs_dir: Path, launcher: list[str]) -> list[dict]:
    """Run `python -m utils train full` in the tiny profile under `launcher`; the finished run's log history."""
    env = {**os.environ, "COURSE_PROFILE": "tiny", "COURSE_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    done = subprocess.run([*launcher, "-m", "utils", "train", "full"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    finished = json.loads((runs_dir / "tiny" / "checkpoints" / "full" / "finished.json").read_text())
    return finished["history"]


def training_losses(history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in history if "loss" in entry]


def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(tmp_path):
    one = train_command(tmp_path / "one", [sys.executable])
    two = train_command(tmp_path / "two", [str(ACCELERATE), "launch", "--config_file",
                                           str(ROOT / "configs" / "accelerate" / "cpu_ddp.yaml")])

    assert len(training_losses(one)) >= 4
    assert training_losses(two) == pytest.approx(training_losses(one), rel=1e-4)
    evaluations = [[entry["eval_loss"] for entry in history if "eval_loss" in entry] for history in (one, two)]
    assert evaluations[1] == pytest.approx(evaluations[0], rel=1e-4)


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    from utils.training import per_process_batch

    assert per_process_batch(8, 2) == 4
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        per_process_batch(8, 3)
