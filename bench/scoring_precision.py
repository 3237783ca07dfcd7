"""What scoring from the bf16 copy saves: notebook 02's perplexity and benchmark, in float32 and in bf16.

    OMP_NUM_THREADS=2 .venv/bin/python bench/scoring_precision.py --profile offline --repeats 2

Scores the profile's base model on its test split (perplexity of the reference summaries,
`utils.evaluation.split_perplexity`) and on the course's benchmark (`utils.benchmarks.run_benchmark`),
once with the profile computing in float32 and once in bf16, where scoring goes through the model's
bf16 copy (`utils.models.inference_copy`), as notebooks do where the profile trains under bf16
autocast. The two precisions alternate for `--repeats` rounds; the table gives the fastest seconds of
each, and both figures, so that what bf16 rounding moves shows next to what it saves.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import pandas as pd

from utils.benchmarks import run_benchmark
from utils.course import configure_threads
from utils.data import load_profile_data
from utils.evaluation import split_perplexity
from utils.models import load_model_and_tokenizer
from utils.profiles import get_profile

PRECISIONS = {"float32": "no", "bf16 copy": "bf16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "offline"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    threads = configure_threads()
    profile = get_profile(args.profile)
    model, tokenizer = load_model_and_tokenizer(profile)
    test = load_profile_data(profile)["test"]
    seconds: dict[tuple[str, str], list[float]] = {}
    figures: dict[tuple[str, str], str] = {}
    for _ in range(args.repeats):
        for name, mixed_precision in PRECISIONS.items():
            scored_as = replace(profile, mixed_precision=mixed_precision)
            started = time.perf_counter()
            figures[name, "perplexity"] = f"{split_perplexity(model, tokenizer, scored_as, test):.4f}"
            seconds.setdefault((name, "perplexity"), []).append(time.perf_counter() - started)
            started = time.perf_counter()
            result = run_benchmark(model, tokenizer, scored_as)
            figures[name, "benchmark"] = f"acc {result.acc:.3f} ({result.n} items)"
            seconds.setdefault((name, "benchmark"), []).append(time.perf_counter() - started)

    rows = []
    for task in ("perplexity", "benchmark"):
        fp32, bf16 = (min(seconds[name, task]) for name in PRECISIONS)
        rows.append({"scoring": task, "float32 s": round(fp32, 1), "bf16 copy s": round(bf16, 1),
                     "speed-up": f"{fp32 / bf16:.2f}x", "float32 figure": figures["float32", task],
                     "bf16 figure": figures["bf16 copy", task]})
    print(f"\nprofile {profile.name}, {len(test)} test rows, {threads} threads, fastest of {args.repeats}")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
