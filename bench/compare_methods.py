"""Base vs full fine-tuning vs LoRA on any data, headless: the core comparison of notebooks 02 and 03.

On the real DialogSum (kept outside the project), in the offline profile:

    COURSE_PROFILE=offline COURSE_DATA=../shared/data/dialogsum COURSE_TEST_EXAMPLES=200 \\
        .venv/bin/python bench/compare_methods.py

It trains on the profile's number of training rows of the data's train split, scores the
first COURSE_TEST_EXAMPLES test dialogues against all their references, records the results in
runs/<profile>-<data>/results.json and prints a markdown table. Reruns reuse finished trainings.
"""

from __future__ import annotations

import time

from utils import course
from utils.adapters import add_lora
from utils.data import load_profile_data, tokenize_for_training
from utils.evaluation import evaluate
from utils.models import count_parameters, load_model_and_tokenizer
from utils.report import markdown_table
from utils.training import train

NOTEBOOK = "bench_compare_methods"


def main() -> None:
    run = course.start(NOTEBOOK)
    profile = run.profile
    data = load_profile_data(profile)
    test = data["test"]
    print({split: len(rows) for split, rows in data.items()})
    records = []

    model, tokenizer = load_model_and_tokenizer(profile)
    train_set = tokenize_for_training(data["train"], tokenizer, profile)
    validation_set = tokenize_for_training(data["validation"], tokenizer, profile)
    started = time.perf_counter()
    _, scores = evaluate(model, tokenizer, profile, test, description="base")
    records.append(run.record("base", **scores, test_examples=len(test), eval_seconds=time.perf_counter() - started))

    _, total = count_parameters(model)
    full = train(model, tokenizer, profile, "full", train_set, validation_set, profile.full_learning_rate)
    _, scores = evaluate(model, tokenizer, profile, test, description="full")
    records.append(run.record("full", **scores, test_examples=len(test), train_examples=len(train_set),
                              trainable_params=total, total_params=total, train_seconds=full.train_seconds,
                              tokens_per_second=full.tokens_per_second, peak_memory_mb=full.peak_memory_mb))
    del model

    model, _ = load_model_and_tokenizer(profile)
    model = add_lora(model, rank=profile.lora_rank)
    trainable, _ = count_parameters(model)
    lora = train(model, tokenizer, profile, f"lora-r{profile.lora_rank}", train_set, validation_set,
                 profile.peft_learning_rate)
    _, scores = evaluate(model, tokenizer, profile, test, description="lora")
    records.append(run.record("lora", **scores, test_examples=len(test), train_examples=len(train_set),
                              rank=profile.lora_rank, trainable_params=trainable, total_params=total,
                              train_seconds=lora.train_seconds, tokens_per_second=lora.tokens_per_second,
                              peak_memory_mb=lora.peak_memory_mb))
    print()
    print(markdown_table(records))


if __name__ == "__main__":
    main()
