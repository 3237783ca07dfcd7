"""Training steps of full fine-tuning, LoRA, prompt tuning and QLoRA on the same batch.

    .venv/bin/python bench/training.py [--profile offline] [--steps 3] [--batch-size 4]

Each method runs in its own Python process (one warm-up step, then `--steps` timed AdamW
steps on the first `--batch-size` training examples), so each peak memory is that method's
alone: process RSS on CPU, CUDA peak allocated on GPU. Prints a markdown table with ratios
to full fine-tuning.
"""

from __future__ import annotations

import argparse
import os
import platform

from utils.apps.benchmark import TRAINING_METHODS, compare_training_methods
from utils.apps.report import markdown_table
from utils.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "offline"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=list(TRAINING_METHODS), choices=TRAINING_METHODS)
    args = parser.parse_args()

    profile = get_profile(args.profile)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, profile {profile.name}")
    rows = compare_training_methods(profile, tuple(args.methods), args.steps, args.batch_size)
    for row in rows:
        row["notebook"] = "bench_training"
    columns = ("device", "tokens_per_step", "seconds_per_step", "tokens_per_second", "speed_vs_full",
               "peak_memory_mb", "memory_vs_full", "weight_memory_mb", "trainable_params")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
