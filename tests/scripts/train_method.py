"""Train one method in a tiny profile the way the notebooks do, as its own process; print the outcome as JSON.

    python tests/scripts/train_method.py METHOD [--evaluate]

METHOD is full, lora, prompt_tuning, qlora or ppo. COURSE_PROFILE picks the profile (default tiny),
COURSE_RUNS_DIR where checkpoints go. Eight steps with a checkpoint every two, so a test can kill
the process between checkpoints and run it again. SLOW_STEP_SECONDS (test only) sleeps after every
training step, which widens the window in which the process can be killed.
The last line printed is a JSON object: losses, a digest of the trained weights, ROUGE with --evaluate.
"""

import hashlib
import json
import os
import sys
import time

import torch
import transformers

from utils.apps.benchmark import model_for_method
from utils.data import load_profile_data, tokenize_for_training
from utils.models import load_tokenizer
from utils.profiles import get_profile
from utils.training import train

STEPS, EVERY = 8, 2


def digest(model) -> str:
    """sha256 of the trainable weights, in name order: equal digests mean bit-identical training."""
    hasher = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            hasher.update(name.encode())
            hasher.update(parameter.detach().float().cpu().numpy().tobytes())
    return hasher.hexdigest()


def slow_down_steps(seconds: float) -> None:
    if seconds <= 0:
        return
    real_step = transformers.Trainer.training_step

    def slow_step(self, *args, **kwargs):
        loss = real_step(self, *args, **kwargs)
        time.sleep(seconds)
        return loss

    transformers.Trainer.training_step = slow_step


def train_supervised(profile, method: str, evaluate: bool) -> dict:
    tokenizer = load_tokenizer(profile)
    data = load_profile_data(profile)
    train_set = tokenize_for_training(data["train"].select(range(8)), tokenizer, profile)
    eval_set = tokenize_for_training(data["validation"].select(range(4)), tokenizer, profile)
    model, learning_rate = model_for_method(profile, method, tokenizer)
    overrides = {}
    if method == "qlora":
        from utils.quantization import qlora_training_overrides

        overrides = qlora_training_overrides(profile)
    run = train(model, tokenizer, profile, method, train_set, eval_set, learning_rate,
                max_steps=STEPS, save_steps=EVERY, eval_steps=EVERY, **overrides)
    train_losses, eval_losses = run.losses()
    outcome = {"train_losses": train_losses, "eval_losses": eval_losses, "weights": digest(model),
               "reused": run.reused}
    if evaluate:
        from utils.evaluation import evaluate as evaluate_split

        predictions, scores = evaluate_split(model, tokenizer, profile, data["test"].select(range(4)))
        outcome.update(predictions=predictions, rouge=scores)
    return outcome


def train_ppo_policy(profile) -> dict:
    from token_share_reward import TokenShareReward  # beside this script

    from utils.adapters import add_lora
    from utils.models import load_model
    from utils.ppo import PolicyWithValueHead, PPOConfig, train_ppo
    from utils.prompts import instruction

    tokenizer = load_tokenizer(profile)
    prompts = [instruction(d) for d in load_profile_data(profile)["train"]["dialogue"][:8]]
    policy = PolicyWithValueHead(add_lora(load_model(profile), rank=4))
    config = PPOConfig(steps=STEPS, batch_size=4, mini_batch_size=2, max_new_tokens=5, learning_rate=1e-2,
                       checkpoint_every=EVERY)
    slow = float(os.environ.get("SLOW_STEP_SECONDS", "0"))
    result = train_ppo(policy, tokenizer, TokenShareReward("e").reward, prompts, config,
                       os.path.join(os.environ["COURSE_RUNS_DIR"], profile.name, "ppo"),
                       callback=(lambda record: time.sleep(slow)) if slow else None)
    history = [{k: v for k, v in record.items() if k != "seconds"} for record in result.history]
    return {"history": history, "weights": digest(policy), "reused": result.reused,
            "resumed_from": result.resumed_from}


def main() -> None:
    method = sys.argv[1]
    profile = get_profile(os.environ.get("COURSE_PROFILE", "tiny"))
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever the machine's load
    transformers.set_seed(profile.seed)  # what course.start() does in every notebook
    slow_down_steps(float(os.environ.get("SLOW_STEP_SECONDS", "0")))
    if method == "ppo":
        outcome = train_ppo_policy(profile)
    else:
        outcome = train_supervised(profile, method, "--evaluate" in sys.argv)
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
