"""PPO's change in toxicity in notebook 06's set-up, over several training seeds.

    OMP_NUM_THREADS=1 COURSE_PROFILE=offline COURSE_RUNS_DIR=/tmp/ppo-runs .venv/bin/python bench/ppo_seeds.py

For each training seed: a fresh LoRA adapter initialised with that seed on notebook 03's merged
summarizer, PPO with the notebook's settings (`utils.detox.ppo_config`, its seed set to the
training seed: prompt order and sampling), and the held-out dialogues sampled with the notebook's
evaluation seeds after training, paired with the same samples of the summarizer before PPO.
Prints each training seed's mean change and its paired 95% interval. The profile's own seed is
the notebook's run: its folder is the notebook's, so a finished notebook run is reused.

    ... bench/ppo_seeds.py --no-kl-penalty --steps 40 --seeds 42

the same set-up with the KL penalty off (beta = 0, fixed) and nothing else changed, plus the
reward, KL and toxicity of each step's samples: does the policy hack the reward? `--training-only`
skips the sampling before and after and prints each step as it ends.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from utils import course
from utils.adapters import add_lora
from utils.data import prompts_for
from utils.detox import (
    evaluation_seeds,
    fine_tuned_summarizer,
    ppo_config,
    sample_summaries,
    score_table,
    step_toxicity,
)
from utils.plumbing.files import runs_dir
from utils.ppo import PolicyWithValueHead, train_ppo
from utils.rewards import make_scorer
from utils.rl_data import load_detox
from utils.stats import paired_difference


def print_step(scorer):
    """A train_ppo callback that prints the step's reward, KL, toxicity and response length as it ends."""
    def callback(record: dict) -> None:
        toxicity = float(np.mean(scorer.toxicity(record["responses"])))
        print(f"step {record['step']}: reward {record['reward_mean']:+.3f}, KL {record['kl']:+.3f}, "
              f"beta {record['kl_coef']:.3f}, toxicity {toxicity:.4f}, length {record['response_length']:.1f}, "
              f"first response {record['responses'][0]!r}", flush=True)
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the profile's seed and the next two)")
    parser.add_argument("--steps", type=int, help="PPO steps (default: the profile's)")
    parser.add_argument("--no-kl-penalty", action="store_true", help="beta = 0, fixed: the notebook's reward-hacking run")
    parser.add_argument("--training-only", action="store_true",
                        help="print each step's reward, KL and toxicity as it trains; no sampling before or after")
    args = parser.parse_args()
    run = course.start("bench_ppo_seeds")
    profile = run.profile
    seeds = args.seeds or [profile.seed + i for i in range(3)]
    overrides = {"steps": args.steps} if args.steps else {}
    if args.no_kl_penalty:
        overrides.update(init_kl_coef=0.0, adaptive_kl=False)
    scorer = make_scorer(profile)
    train_dialogues = [row["dialogue"] for row in load_detox("train")]
    test_dialogues = [row["dialogue"] for row in load_detox("test")]
    ppo_dir = runs_dir(profile.run_name) / "ppo"

    summarizer, tokenizer, _ = fine_tuned_summarizer(profile)
    train_prompts = prompts_for(train_dialogues, tokenizer, profile)
    test_prompts = prompts_for(test_dialogues, tokenizer, profile)
    config = ppo_config(profile, **overrides)
    eval_seeds = evaluation_seeds(profile)
    if not args.training_only:
        before = score_table(scorer.toxicity, sample_summaries(summarizer, tokenizer, test_prompts, config,
                                                               eval_seeds, profile.eval_batch_size, "before PPO"))
    rows = []
    for seed in seeds:
        if seed != seeds[0]:
            summarizer, tokenizer, _ = fine_tuned_summarizer(profile)
        torch.manual_seed(seed)
        policy = PolicyWithValueHead(add_lora(summarizer, rank=profile.lora_rank))
        name = "no-kl-penalty" if args.no_kl_penalty else "detox"
        folder = ppo_dir / (name if seed == profile.seed else f"{name}-seed{seed}")
        result = train_ppo(policy, tokenizer, scorer.reward, train_prompts, ppo_config(profile, seed=seed, **overrides),
                           folder, reward_prompts=train_dialogues, callback=print_step(scorer))
        if args.training_only:
            continue
        after = score_table(scorer.toxicity, sample_summaries(policy.model, tokenizer, test_prompts, config,
                                                              eval_seeds, profile.eval_batch_size, "after PPO"))
        change = paired_difference(before, after)
        rows.append({"training seed": seed, "toxicity before": f"{change['before_mean']:.4f}",
                     "after": f"{change['after_mean']:.4f}", "mean change": f"{change['difference']:+.4f}",
                     "95% interval": f"[{change['ci_low']:+.4f}, {change['ci_high']:+.4f}]",
                     "excludes zero": "yes" if change["excludes_zero"] else "no",
                     "PPO s": f"{sum(record['seconds'] for record in result.history):.0f}"})
        print(pd.DataFrame(rows[-1:]).set_index("training seed").to_markdown(), flush=True)
        if args.no_kl_penalty:
            steps = pd.DataFrame({"reward": [r["reward_mean"] for r in result.history],
                                  "KL": [r["kl"] for r in result.history],
                                  "toxicity": [value for _, value in step_toxicity(scorer.toxicity, result.history)],
                                  "length": [r["response_length"] for r in result.history]},
                                 index=pd.Index([r["step"] for r in result.history], name="step"))
            print(steps.round(3).to_markdown())
            for text in result.history[-1]["responses"][:4]:
                print("  last step sampled:", repr(text))
    kind = "without the KL penalty" if args.no_kl_penalty else "with the notebook's settings"
    print(f"\n{profile.name}: PPO {kind}, {config.steps} steps of {config.batch_size} prompts, lr {config.learning_rate}; "
          f"toxicity of {len(test_prompts)} held-out dialogues x {len(eval_seeds)} samples (seeds {eval_seeds}), "
          f"{torch.get_num_threads()} threads\n")
    if not rows:
        return
    print(pd.DataFrame(rows).set_index("training seed").to_markdown())
    changes = np.array([float(row["mean change"]) for row in rows])
    print(f"\nmean change over the seeds {changes.mean():+.4f}; every seed lowered toxicity: {bool((changes < 0).all())}; "
          f"intervals excluding zero: {sum(row['excludes zero'] == 'yes' for row in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()
