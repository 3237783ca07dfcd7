"""GRPO in notebook 09's set-up, with settings of your choice: does each check's pass rate move?

    OMP_NUM_THREADS=1 COURSE_RUNS_DIR=/tmp/grpo-runs .venv/bin/python bench/grpo_offline.py --name lr1e-3 \
        --learning-rate 1e-3 --temperature 0.5

Notebook 09's combined reward (equal weights) and the profile's GRPO settings, changed by the options;
the held-out dialogues sampled with notebook 06's evaluation settings and seeds before and after
(the "before" samples are reused from the generations store of the runs folder), and for each check
and the toxicity the paired 95% interval of the change. Each setting trains into runs/<profile>/grpo/<name>.
"""

from __future__ import annotations

import argparse
import time

from utils.adapters import add_lora
from utils.data import prompts_for
from utils.detox import evaluation_seeds, fine_tuned_summarizer, ppo_config, sample_summaries, score_table
from utils.generation import reuse_generations_in
from utils.grpo import GRPOPolicy, grpo_config, train_grpo
from utils.plumbing.files import runs_dir
from utils.profiles import get_profile
from utils.rewards import CHECKS, CombinedReward, make_scorer, pass_table
from utils.rl_data import load_detox
from utils.stats import paired_difference

WEIGHTS = {"length in band": 1.0, "names the speakers": 1.0, "copies no sentence": 1.0, "non-toxic": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--name", required=True, help="the run's folder under runs/<profile>/grpo/")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--mini-batches", type=int)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    changes = {key: value for key, value in {"steps": args.steps, "learning_rate": args.learning_rate,
                                              "temperature": args.temperature, "mini_batches": args.mini_batches}.items()
               if value is not None}
    reuse_generations_in(runs_dir(profile.run_name) / "generations")
    summarizer, tokenizer, _ = fine_tuned_summarizer(profile)
    policy = GRPOPolicy(add_lora(summarizer, rank=profile.lora_rank))
    scorer = make_scorer(profile)
    train_dialogues = [row["dialogue"] for row in load_detox("train")]
    test_dialogues = [row["dialogue"] for row in load_detox("test")]
    train_prompts = prompts_for(train_dialogues, tokenizer, profile)
    test_prompts = prompts_for(test_dialogues, tokenizer, profile)
    evaluation, seeds = ppo_config(profile), evaluation_seeds(profile)
    with policy.model.disable_adapter():
        before = sample_summaries(policy.model, tokenizer, test_prompts, evaluation, seeds, profile.eval_batch_size,
                                  "before GRPO")
    config = grpo_config(profile, **changes)
    started = time.perf_counter()
    result = train_grpo(policy, tokenizer, CombinedReward(WEIGHTS, scorer), train_prompts, train_dialogues, config,
                        runs_dir(profile.run_name) / "grpo" / args.name)
    print(f"{config.steps} steps, {time.perf_counter() - started:.0f} s, peak memory {result.peak_memory_mb} MB")
    for record in result.history:
        print({key: round(value, 3) for key, value in record.items() if isinstance(value, float)})
    after = sample_summaries(policy.model, tokenizer, test_prompts, evaluation, seeds, profile.eval_batch_size,
                             "after GRPO")
    tables = {name: (pass_table(check, test_dialogues, before), pass_table(check, test_dialogues, after))
              for name, check in CHECKS.items()}
    tables["toxicity"] = (score_table(scorer.toxicity, before), score_table(scorer.toxicity, after))
    for name, (old, new) in tables.items():
        c = paired_difference(old, new)
        print(f"{name:20s} before {c['before_mean']:.3f} after {c['after_mean']:.3f} "
              f"change {c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]")


if __name__ == "__main__":
    main()
