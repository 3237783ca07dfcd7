"""Every method on the same data, headless: the comparisons of notebooks 02 to 05.

On the real DialogSum (kept outside the project), in the offline profile:

    COURSE_PROFILE=offline COURSE_DATA=../shared/data/dialogsum COURSE_TEST_EXAMPLES=200 \\
        .venv/bin/python bench/compare_methods.py [--methods base base_nf4 full lora prompt_tuning qlora]

It trains each method on the profile's number of training rows of the data's train split,
scores the first COURSE_TEST_EXAMPLES test dialogues against all their references, records
the results in runs/<profile>-<data>/results.json and prints a markdown table of every method
recorded there. Reruns reuse finished trainings (same checkpoint names as the notebooks).
`base_nf4` scores the untrained base model loaded in 4-bit NF4: what quantization alone costs
before QLoRA trains anything (recorded as `base`, variant "nf4, untrained").

`--lora-targets attention|all-linear` puts the adapters of `lora` and `qlora` on the query and
value projections or on every linear layer instead of where the notebooks put them (LoRA:
attention, QLoRA: all-linear). Such runs get their own checkpoints and are recorded as variants,
next to the notebooks' recipe rather than in its place.
"""

from __future__ import annotations

import argparse
import time

from utils import course
from utils.adapters import LORA_TARGETS
from utils.apps.benchmark import DEFAULT_LORA_TARGETS, TRAINING_METHODS, model_for_method
from utils.apps.report import COMPARISON_COLUMNS, markdown_table, method_comparison
from utils.apps.train import run_name
from utils.data import load_profile_data, tokenize_for_training
from utils.evaluation import evaluate
from utils.models import count_parameters, load_model, load_tokenizer
from utils.plumbing.results import load_results
from utils.training import train

NOTEBOOK = "bench_compare_methods"


def targets_variant(method: str, lora_targets: str | None) -> str:
    """The variant name of a LoRA or QLoRA run whose adapters sit elsewhere than in the notebooks; "" otherwise."""
    if method not in DEFAULT_LORA_TARGETS or lora_targets in (None, DEFAULT_LORA_TARGETS[method]):
        return ""
    return {"attention": "LoRA on q, v", "all-linear": "LoRA on every linear layer"}[lora_targets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["base", *TRAINING_METHODS],
                        choices=["base", "base_nf4", *TRAINING_METHODS])
    parser.add_argument("--lora-targets", choices=LORA_TARGETS,
                        help="where lora and qlora put their adapters (default: as in the notebooks)")
    args = parser.parse_args()
    run = course.start(NOTEBOOK)
    profile = run.profile
    data = load_profile_data(profile)
    test = data["test"]
    print({split: len(rows) for split, rows in data.items()})
    tokenizer = load_tokenizer(profile)
    train_set = tokenize_for_training(data["train"], tokenizer, profile)
    validation_set = tokenize_for_training(data["validation"], tokenizer, profile)

    for method in args.methods:
        if method == "base":
            started = time.perf_counter()
            _, scores = evaluate(load_model(profile), tokenizer, profile, test, description="base")
            run.record("base", **scores, test_examples=len(test), eval_seconds=time.perf_counter() - started)
            continue
        if method == "base_nf4":
            from utils.quantization import load_4bit_model

            started = time.perf_counter()
            _, scores = evaluate(load_4bit_model(profile), tokenizer, profile, test, description="base in NF4")
            run.record("base", variant="nf4, untrained", **scores, test_examples=len(test),
                       eval_seconds=time.perf_counter() - started)
            print(f"base in NF4, untrained: ROUGE-1 {scores['rouge1']:.4f}, ROUGE-L {scores['rougeL']:.4f}")
            continue
        model, learning_rate = model_for_method(profile, method, tokenizer, args.lora_targets)
        trainable, total = count_parameters(model)
        overrides = {}
        if method == "qlora":
            from utils.quantization import qlora_training_overrides

            overrides = qlora_training_overrides(profile)
        variant = targets_variant(method, args.lora_targets)
        name = run_name(method, profile.lora_rank, args.lora_targets)
        result = train(model, tokenizer, profile, name, train_set, validation_set, learning_rate, **overrides)
        _, scores = evaluate(model, tokenizer, profile, test, description=f"{method} {variant}".strip())
        run.record(method, variant=variant, **scores, test_examples=len(test), train_examples=len(train_set),
                   trainable_params=trainable, total_params=total, train_seconds=result.train_seconds,
                   tokens_per_second=result.tokens_per_second, peak_memory_mb=result.peak_memory_mb)
        del model
    print()
    print(markdown_table(method_comparison(load_results(profile.run_name)), ("test_examples", *COMPARISON_COLUMNS)))


if __name__ == "__main__":
    main()
