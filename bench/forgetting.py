"""Forgetting, headless: the second task before and after training on summaries, for full, LoRA and multitask.

    COURSE_PROFILE=offline .venv/bin/python bench/forgetting.py [--epochs 4] [--learning-rate 1e-4]
        [--methods full lora multitask] [--share 0.25]

Both probes of the second task: the benchmark (lm-evaluation-harness, log-likelihood of the
gold choice, utils/benchmarks.py) and short answers written by the model (utils/forgetting.py).
`full` and `multitask` train every weight at --learning-rate, `lora` trains notebook 03's adapter at
the profile's PEFT rate; all for --epochs passes over the summaries (multitask: as many optimizer
steps, with --share of each batch on average second-task examples). Trainings go to
runs/<profile>/checkpoints/forgetting-* and are reused by reruns with the same settings. Prints a
markdown table: each probe's accuracy before and after, and the paired 95% interval of after - before.
"""

from __future__ import annotations

import argparse

import pandas as pd

from utils import course
from utils.adapters import add_lora
from utils.benchmarks import compare_results, run_benchmark
from utils.data import load_profile_data, tokenize_for_training
from utils.forgetting import compare_probes, multitask_mix, second_task_training_set, short_answer_probe
from utils.models import load_model_and_tokenizer
from utils.training import train

METHODS = ("full", "lora", "multitask")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--learning-rate", type=float, default=None, help="full and multitask (default: the profile's)")
    parser.add_argument("--share", type=float, default=0.25, help="second-task share of the multitask data")
    args = parser.parse_args()
    run = course.start("bench_forgetting")
    profile = run.profile
    learning_rate = args.learning_rate or profile.full_learning_rate
    model, tokenizer = load_model_and_tokenizer(profile)
    data = load_profile_data(profile)
    summaries = tokenize_for_training(data["train"], tokenizer, profile)
    validation = tokenize_for_training(data["validation"], tokenizer, profile)
    benchmark_before, answers_before = run_benchmark(model, tokenizer, profile), short_answer_probe(model, tokenizer, profile)
    print("base:", benchmark_before.summary(), "|", answers_before.summary(), flush=True)
    rows = {}
    for method in args.methods:
        candidate, _ = load_model_and_tokenizer(profile)
        settings = f"e{args.epochs:g}-lr{learning_rate:g}"
        if method == "lora":
            candidate = add_lora(candidate, rank=profile.lora_rank)
            trained = train(candidate, tokenizer, profile, f"forgetting-lora-e{args.epochs:g}", summaries, validation,
                            profile.peft_learning_rate, epochs=args.epochs)
        elif method == "multitask":
            mixed = multitask_mix(summaries, second_task_training_set(tokenizer, profile), args.share)
            trained = train(candidate, tokenizer, profile, f"forgetting-multitask-{settings}-share{args.share:g}",
                            mixed, validation, learning_rate, epochs=args.epochs * len(summaries) / len(mixed))
        else:
            trained = train(candidate, tokenizer, profile, f"forgetting-full-{settings}", summaries, validation,
                            learning_rate, epochs=args.epochs)
        benchmark = compare_results(benchmark_before, run_benchmark(candidate, tokenizer, profile))
        answers = compare_probes(answers_before, short_answer_probe(candidate, tokenizer, profile))
        print(f"{method}:", benchmark.summary(), "|", answers.summary(), flush=True)
        rows[method] = {
            "train s": round(trained.train_seconds),
            "benchmark before": benchmark.before, "benchmark after": benchmark.after,
            "benchmark CI": f"[{benchmark.ci_low:+.3f}, {benchmark.ci_high:+.3f}]",
            "short answers before": answers.before, "short answers after": answers.after,
            "short answers CI": f"[{answers.ci_low:+.3f}, {answers.ci_high:+.3f}]",
        }
        del candidate
    print(f"\n{profile.name}, {args.epochs:g} epochs, full/multitask lr {learning_rate:g}, share {args.share:g}\n")
    print(pd.DataFrame(rows).T.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
