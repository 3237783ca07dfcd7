"""The prepared GPU check (bench/gpu_check.sh) runs its every step on the CPU at test sizes, so it cannot rot
before a GPU is lent to run it for real."""

import os
import subprocess
import sys

import pytest

from utils.plumbing.files import PROJECT_ROOT


@pytest.mark.long  # every step it runs, `make test` runs on its own; this checks that the script holds together
def test_the_gpu_check_dry_run_writes_its_three_tables(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path), "--dry"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=900, check=False)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "| 01_prompting | passed |" in report
    assert "| 02_full_fine_tuning | full |  | yes |" in report
    throughput = report.split("## Full fine-tuning")[1].splitlines()[4].split("|")
    assert float(throughput[6]) > 0  # tokens per second


def test_the_gpu_check_refuses_a_machine_without_a_gpu_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path)], cwd=PROJECT_ROOT,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, check=False)

    assert result.returncode == 2 and "--dry" in result.stderr
