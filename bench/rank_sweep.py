"""Notebook 03's rank sweep, headless: each rank's adapter trained and scored as the notebook does.

    COURSE_PROFILE=offline COURSE_MIXED_PRECISION=no .venv/bin/python bench/rank_sweep.py --ranks 64
        [--optimizer adamw_torch_fused] [--validate]

Trains a fresh LoRA adapter of each rank on the first `sweep_train_examples` summaries at
`peft_learning_rate` and scores it on the first `sweep_test_examples` test rows, as section 6 of
notebook 03 does. --optimizer swaps the Trainer's AdamW (utils.training.TRAINER_OPTIMIZER) and
--validate measures a validation loss during training, as the notebook did before 2026-12-05: the
two things that changed around the sweep's figures (docs/RESULTS.md, "Notebooks 02 to 05 in fp32
after validation stopped drawing random numbers"). Checkpoints are named for the settings
(`bench-sweep-r64`, `bench-sweep-r64-adamw_torch-validated`, ...), apart from the notebook's.
Prints a markdown table of ROUGE.
"""

from __future__ import annotations

import argparse

import pandas as pd

from utils import course, training
from utils.adapters import add_lora
from utils.data import load_profile_data, tokenize_for_training
from utils.evaluation import evaluate
from utils.models import load_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", nargs="+", type=int, default=None, help="default: the profile's sweep_ranks")
    parser.add_argument("--optimizer", choices=("adamw_torch", "adamw_torch_fused"), default=None,
                        help="default: the course's (utils.training.TRAINER_OPTIMIZER)")
    parser.add_argument("--validate", action="store_true", help="measure a validation loss during training")
    args = parser.parse_args()
    if args.optimizer:
        training.TRAINER_OPTIMIZER = args.optimizer
    run = course.start("bench_rank_sweep")
    profile = run.profile
    _, tokenizer = load_model_and_tokenizer(profile)
    data = load_profile_data(profile)
    train_set = tokenize_for_training(data["train"], tokenizer, profile)
    sweep_train = train_set.select(range(min(len(train_set), profile.sweep_train_examples)))
    sweep_test = data["test"].select(range(min(len(data["test"]), profile.sweep_test_examples)))
    validation = tokenize_for_training(data["validation"], tokenizer, profile) if args.validate else None
    rows = {}
    for rank in args.ranks or profile.sweep_ranks:
        candidate, _ = load_model_and_tokenizer(profile)
        candidate = add_lora(candidate, rank=rank, dropout=profile.lora_dropout)
        name = f"bench-sweep-r{rank}" + (f"-{args.optimizer}" if args.optimizer else "")
        name += "-validated" if args.validate else ""
        result = training.train(candidate, tokenizer, profile, name, sweep_train, validation, profile.peft_learning_rate)
        _, scores = evaluate(candidate, tokenizer, profile, sweep_test, description=f"rank {rank}")
        rows[rank] = {"rouge1": scores["rouge1"], "rougeL": scores["rougeL"], "train s": f"{result.train_seconds:.0f}"}
        del candidate
    optimizer = args.optimizer or "the course's AdamW"
    print(f"\n{profile.name}, {optimizer}, validation {'on' if args.validate else 'off'}, "
          f"{len(sweep_train)} training rows, {len(sweep_test)} test rows\n")
    print(pd.DataFrame(rows).T.rename_axis("rank").to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()
