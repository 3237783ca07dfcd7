"""PPO and DPO steps of notebooks 06 and 08 in float32 against bf16 autocast, in one run.

    OMP_NUM_THREADS=2 COURSE_PROFILE=offline .venv/bin/python bench/rl_steps.py --steps 3

Trains a fresh LoRA adapter on the profile's model with the profile's PPO settings
(`utils.detox.ppo_config`: the detox training dialogues, the toxicity reward) and, separately,
with its DPO settings on the detox preference pairs, once per precision, into a temporary
folder. Each step's seconds come from the run's own log (checkpoint writing excluded); the first
step of each run is left out of the mean as warm-up. Under bf16 autocast PPO also samples from a
bf16 copy of the policy with its adapter merged (`utils.models.inference_copy`); `sampling` times
that part alone: one step's sampling (the profile's batch of prompts and response length, copy included)
from the float32 policy and from the copy, alternately, on the same prompts.
Prints markdown tables: seconds per step, and the speed-up of bf16.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import mean, median

import pandas as pd
import torch

from utils import course
from utils.adapters import add_lora
from utils.data import prompts_for
from utils.detox import detox_preferences, dpo_config, ppo_config
from utils.dpo import train_dpo
from utils.models import load_model_and_tokenizer
from utils.ppo import PolicyWithValueHead, sample_responses, train_ppo
from utils.rewards import make_scorer
from utils.rl_data import load_detox

PRECISIONS = {"float32": None, "bf16 autocast": "bfloat16"}


def step_seconds(history: list[dict]) -> float:
    """Mean seconds of a run's steps after the first (all of them when there is one)."""
    seconds = [record["seconds"] for record in history]
    return mean(seconds[1:] or seconds)


def sampling_seconds(profile, dialogues: list[str], repeats: int) -> dict[str, float]:
    """Median seconds of one PPO step's sampling (`sample_responses`) per precision, timed alternately."""
    model, tokenizer = load_model_and_tokenizer(profile)
    torch.manual_seed(profile.seed)
    policy = PolicyWithValueHead(add_lora(model, rank=profile.lora_rank)).eval()
    prompts = prompts_for(dialogues[: profile.ppo_batch_size], tokenizer, profile)
    times: dict[str, list[float]] = {label: [] for label in PRECISIONS}
    for _ in range(repeats + 1):  # the first round is warm-up
        for label, dtype in PRECISIONS.items():
            config = ppo_config(profile, autocast_dtype=dtype, min_new_tokens=profile.ppo_max_new_tokens)
            torch.manual_seed(profile.seed)
            started = time.perf_counter()
            sample_responses(policy, tokenizer, prompts, config)
            times[label].append(time.perf_counter() - started)
    return {label: median(seconds[1:]) for label, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps of each run (the first is warm-up)")
    parser.add_argument("--methods", nargs="+", choices=("ppo", "dpo", "sampling"), default=["ppo", "dpo", "sampling"])
    parser.add_argument("--sampling-repeats", type=int, default=3, help="timed rounds of `sampling` (after one warm-up)")
    args = parser.parse_args()
    run = course.start("bench_rl_steps")
    profile = run.profile
    rows = load_detox("train")
    reward = make_scorer(profile).reward
    table: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in [m for m in args.methods if m != "sampling"]:
            for label, dtype in PRECISIONS.items():
                model, tokenizer = load_model_and_tokenizer(profile)
                torch.manual_seed(profile.seed)
                model = add_lora(model, rank=profile.lora_rank)
                folder = Path(scratch) / f"{method}-{dtype}"
                if method == "ppo":
                    dialogues = [row["dialogue"] for row in rows]
                    config = ppo_config(profile, steps=args.steps, autocast_dtype=dtype)
                    history = train_ppo(PolicyWithValueHead(model), tokenizer, reward,
                                        prompts_for(dialogues, tokenizer, profile), config, folder,
                                        reward_prompts=dialogues).history
                else:
                    config = dpo_config(profile, steps=args.steps, autocast_dtype=dtype)
                    history = train_dpo(model, tokenizer, detox_preferences(rows, tokenizer, profile), config,
                                        folder).history
                table[(method, label)] = step_seconds(history)
                del model
    rows_out = [{"run": f"{method.upper()}, {label}", "s / step": f"{seconds:.2f}",
                 "speed-up": f"{table[(method, 'float32')] / seconds:.2f}x" if label != "float32" else ""}
                for (method, label), seconds in table.items()]
    print(f"\n{profile.name}, batch {profile.ppo_batch_size} (PPO, mini-batches of {profile.ppo_mini_batch_size}, "
          f"{profile.ppo_epochs} epochs) and {profile.dpo_batch_size} pairs (DPO), {torch.get_num_threads()} threads")
    if rows_out:
        print(f"\n{max(1, args.steps - 1)} step(s) timed per run\n")
        print(pd.DataFrame(rows_out).set_index("run").to_markdown())
    if "sampling" in args.methods:
        sampling = sampling_seconds(profile, [row["dialogue"] for row in rows], args.sampling_repeats)
        print(f"\nOne PPO step's sampling: {profile.ppo_batch_size} prompts, {profile.ppo_max_new_tokens} new tokens "
              f"each, median of {args.sampling_repeats} alternating rounds\n")
        print(pd.DataFrame([{"sampling from": "the float32 policy" if label == "float32" else "a merged bf16 copy",
                             "s": f"{seconds:.2f}",
                             "speed-up": "" if label == "float32" else f"{sampling['float32'] / seconds:.2f}x"}
                            for label, seconds in sampling.items()])
              .set_index("sampling from").to_markdown())


if __name__ == "__main__":
    main()
