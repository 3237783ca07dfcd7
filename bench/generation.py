"""Batched generation vs one example at a time (as the original labs did), same inputs, same model.

    .venv/bin/python bench/generation.py [--profile offline] [--examples 16] [--batch-size 8]

Greedy decoding must give the same summaries both ways; the script checks that, then
prints both timings and the speed ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from utils.course import configure_threads
from utils.data import load_profile_data, prompts_for
from utils.generation import generate
from utils.models import load_model_and_tokenizer
from utils.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "offline"))
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    args = parser.parse_args()

    threads = configure_threads()
    profile = get_profile(args.profile)
    model, tokenizer = load_model_and_tokenizer(profile)
    test = load_profile_data(profile)["test"]
    prompts = prompts_for(list(test["dialogue"])[: args.examples], tokenizer, profile)
    max_new_tokens = args.max_new_tokens or profile.max_new_tokens

    timings, outputs = {}, {}
    for name, batch_size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        started = time.perf_counter()
        outputs[name] = generate(model, tokenizer, prompts, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, description=name)
        timings[name] = time.perf_counter() - started

    single, batched = outputs.values()
    same = sum(a == b for a, b in zip(single, batched))
    print(f"\nprofile {profile.name}, {len(prompts)} prompts, max_new_tokens {max_new_tokens}, "
          f"{threads} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    for name, seconds in timings.items():
        print(f"{name:>16}: {seconds:7.1f} s  ({len(prompts) / seconds:.2f} summaries/s)")
    first, second = timings.values()
    print(f"speed-up of batching: {first / second:.2f}x")
    print(f"identical greedy outputs: {same}/{len(prompts)}")
    if same != len(prompts):
        for a, b in zip(single, batched):
            if a != b:
                print(f"  differs:\n    one at a time: {a!r}\n    batched:       {b!r}")
                break


if __name__ == "__main__":
    main()
