"""Forgetting, headless: the second task before and after training on summaries, for full, LoRA and multitask.

    COURSE_PROFILE=offline .venv/bin/python bench/forgetting.py [--epochs 4] [--learning-rate 5e-4]
        [--methods full multitask lora] [--share 0.25] [--lora-learning-rate 5e-4] [--train-examples 32]
        [--batch-size 4] [--no-benchmark]

Both probes of the second task: the benchmark (lm-evaluation-harness, log-likelihood of the
gold choice, utils/benchmarks.py) and short answers written by the model (utils/forgetting.py).
The trainings are notebook 02's and 03's (`train_for_forgetting`): `full` and `multitask` train
every weight at --learning-rate, `lora` trains notebook 03's adapter at --lora-learning-rate; all
for --epochs passes over the profile's `forgetting_train_examples` summaries at its
`forgetting_batch_size` (multitask: as many optimizer steps, with --share of the examples from the
second task). --no-benchmark leaves the harness out (short answers and perplexity only, for a
search over settings). Defaults: the profile's `forgetting_epochs`,
`forgetting_learning_rate` and `forgetting_lora_learning_rate`. Trainings go to runs/<profile>/checkpoints/ and are reused by reruns
and by the notebooks with the same settings. Prints a markdown table: each probe's accuracy before
and after, the paired 95% interval of after - before, the summaries' test perplexity after (the base
model's is printed with the table), and the share of short answers written in words (a model that
collapsed writes "#2222"), with each run's first few answers above it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd

from utils import course
from utils.benchmarks import compare_results, run_benchmark
from utils.data import load_profile_data, tokenize_for_training
from utils.evaluation import split_perplexity
from utils.forgetting import (
    FORGETTING_METHODS,
    MULTITASK_SHARE,
    compare_probes,
    forgetting_settings,
    short_answer_probe,
    train_for_forgetting,
    word_share,
)
from utils.models import load_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=FORGETTING_METHODS, default=list(FORGETTING_METHODS))
    parser.add_argument("--epochs", type=float, default=None, help="default: the profile's forgetting_epochs")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="full and multitask (default: the profile's forgetting_learning_rate)")
    parser.add_argument("--lora-learning-rate", type=float, default=None, help="default: the profile's forgetting_lora_learning_rate")
    parser.add_argument("--share", type=float, default=MULTITASK_SHARE, help="second-task share of the multitask data")
    parser.add_argument("--train-examples", type=int, default=None,
                        help="the first N summaries, 0 for all (default: the profile's forgetting_train_examples)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's forgetting_batch_size")
    parser.add_argument("--no-benchmark", action="store_true", help="short answers and perplexity only")
    args = parser.parse_args()
    run = course.start("bench_forgetting")
    profile = run.profile
    if args.train_examples is not None:
        profile = replace(profile, forgetting_train_examples=args.train_examples or None)
    if args.batch_size is not None:
        profile = replace(profile, forgetting_batch_size=args.batch_size)
    if args.epochs:
        profile = replace(profile, forgetting_epochs=args.epochs)
    epochs = profile.forgetting_epochs
    learning_rate = args.learning_rate or profile.forgetting_learning_rate
    model, tokenizer = load_model_and_tokenizer(profile)
    data = load_profile_data(profile)
    summaries = tokenize_for_training(data["train"], tokenizer, profile)
    validation = tokenize_for_training(data["validation"], tokenizer, profile)
    benchmark_before = None if args.no_benchmark else run_benchmark(model, tokenizer, profile)
    answers_before = short_answer_probe(model, tokenizer, profile)
    perplexity_before = split_perplexity(model, tokenizer, profile, data["test"])
    print("base:", benchmark_before.summary() if benchmark_before else "", "|", answers_before.summary(),
          f"| summaries' test perplexity {perplexity_before:.2f}", flush=True)
    del model
    rows = {}
    for method in args.methods:
        trained = train_for_forgetting(method, tokenizer, profile, summaries, validation, epochs, learning_rate,
                                       args.share, args.lora_learning_rate)
        candidate = trained.model
        benchmark = (None if benchmark_before is None
                     else compare_results(benchmark_before, run_benchmark(candidate, tokenizer, profile)))
        probe = short_answer_probe(candidate, tokenizer, profile)
        answers = compare_probes(answers_before, probe)
        perplexity = split_perplexity(candidate, tokenizer, profile, data["test"])
        print(f"{method}:", benchmark.summary() if benchmark else "", "|", answers.summary(),
              f"| summaries' test perplexity {perplexity:.2f} | answers in words {word_share(probe.answers):.2f}",
              flush=True)
        for question, answer in list(zip(probe.questions, probe.answers))[:4]:
            print(f"    {question} -> {answer!r}")
        rows[method] = {
            "train s": round(trained.train_seconds), "summaries' test perplexity": perplexity,
            "answers in words": word_share(probe.answers),
            **({} if benchmark is None else {
                "benchmark before": benchmark.before, "benchmark after": benchmark.after,
                "benchmark CI": f"[{benchmark.ci_low:+.3f}, {benchmark.ci_high:+.3f}]"}),
            "short answers before": answers.before, "short answers after": answers.after,
            "short answers CI": f"[{answers.ci_low:+.3f}, {answers.ci_high:+.3f}]",
        }
        del candidate, trained
    print(f"\n{profile.name}, {forgetting_settings(profile)}, full/multitask lr {learning_rate:g}, "
          f"share {args.share:g}; the base model's test perplexity {perplexity_before:.2f}\n")
    print(pd.DataFrame(rows).T.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
