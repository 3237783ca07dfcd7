"""GRPO on one check alone, as notebook 09's section 8 trains it: what does the policy write to pass it?

    OMP_NUM_THREADS=1 COURSE_RUNS_DIR=/tmp/grpo-runs .venv/bin/python bench/grpo_gamed.py --name names-lr1e-3 \
        --check "names the speakers" --learning-rate 1e-3 --beta 0

From a fresh adapter on notebook 03's summarizer, the profile's GRPO settings changed by the options,
trained on the one check. Printed: the check's pass rate and the KL per step, then greedy summaries of
the 40 held-out dialogues before and after, with the check's pass rate and ROUGE-1 on them, and the
first four summaries side by side. Each setting trains into runs/<profile>/grpo/<name>.
"""

from __future__ import annotations

import argparse
import time

from utils.adapters import add_lora
from utils.data import prompts_for
from utils.detox import fine_tuned_summarizer
from utils.evaluation import summarize
from utils.grpo import GRPOPolicy, grpo_config, train_grpo
from utils.metrics import rouge
from utils.plumbing.files import runs_dir
from utils.profiles import get_profile
from utils.rewards import CHECKS, CombinedReward
from utils.rl_data import load_detox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--name", required=True, help="the run's folder under runs/<profile>/grpo/")
    parser.add_argument("--check", default="names the speakers", choices=sorted(CHECKS))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--beta", type=float)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    changes = {key: value for key, value in {"steps": args.steps or profile.grpo_gamed_steps,
                                              "learning_rate": args.learning_rate, "beta": args.beta}.items()
               if value is not None}
    summarizer, tokenizer, _ = fine_tuned_summarizer(profile)
    policy = GRPOPolicy(add_lora(summarizer, rank=profile.lora_rank))
    train_rows, test_rows = load_detox("train"), load_detox("test")
    train_dialogues = [row["dialogue"] for row in train_rows]
    test_dialogues = [row["dialogue"] for row in test_rows]
    references = [[row["summary"]] for row in test_rows]
    config = grpo_config(profile, **changes)
    started = time.perf_counter()
    result = train_grpo(policy, tokenizer, CombinedReward({args.check: 1.0}),
                        prompts_for(train_dialogues, tokenizer, profile), train_dialogues, config,
                        runs_dir(profile.run_name) / "grpo" / args.name)
    print(f"{config.steps} steps on '{args.check}' alone, learning rate {config.learning_rate:g}, beta {config.beta:g}: "
          f"{time.perf_counter() - started:.0f} s")
    for record in result.history:
        print(f"  step {record['step']}: pass rate {record[args.check]:.3f}, KL {record['kl']:.3f}")
    check = CHECKS[args.check]
    with policy.model.disable_adapter():
        greedy_before = summarize(policy.model, tokenizer, profile, test_dialogues, description="greedy, before")
    greedy_after = summarize(policy.model, tokenizer, profile, test_dialogues, description="greedy, after")
    for label, summaries in (("before", greedy_before), ("after", greedy_after)):
        passed = sum(check(d, s) for d, s in zip(test_dialogues, summaries)) / len(summaries)
        print(f"greedy, {label}: '{args.check}' passes {passed:.3f}, ROUGE-1 {rouge(summaries, references)['rouge1']:.4f}")
    for before, after in list(zip(greedy_before, greedy_after))[:4]:
        print(f"\n  before: {before}\n  after:  {after}")


if __name__ == "__main__":
    main()
