"""Group Relative Policy Optimization (GRPO; Shao et al., 2024, DeepSeekMath) for a LoRA-adapted model.

PPO (utils.ppo) learns a value head to tell a good response from an expected one. GRPO learns
none: it samples a **group** of G responses to each prompt and compares each with its own group,

    advantage_i = (reward_i - mean(group rewards)) / (std(group rewards) + eps)

the same advantage for every token of response i. The loss of each response token t is

    -min(ratio_t x A, clip(ratio_t, 1 - clip, 1 + clip) x A) + beta x ratio_t x KL_t
    ratio_t = pi(token) / pi_old(token)                          (pi_old: the policy that sampled)
    KL_t    = pi_ref / pi - log(pi_ref / pi) - 1                  (the "k3" estimator, >= 0)

(the ratio before KL_t corrects for the tokens having been sampled from pi_old, as TRL does).

where pi_ref is the same network with its LoRA adapter switched off. A group whose rewards are
all equal has advantage 0 everywhere: it teaches nothing but the KL term.

The token losses are aggregated as TRL's GRPOTrainer does by default (its loss type "dapo"):
summed over every response token of the step's batch and divided by the number of those tokens,
so each token weighs the same however long its response. The alternatives: "grpo" averages
within each response first (a short response's tokens then weigh more), "bnpo" divides by the
tokens of each mini-batch only, and "dr_grpo" by a constant (responses x the longest allowed).

Use::

    policy = GRPOPolicy(add_lora(model, rank=16))
    result = train_grpo(policy, tokenizer, CombinedReward({...}, scorer), prompts, dialogues,
                        GRPOConfig(steps=10), output_dir)
    result.series("reward")    # [(1, ...), (2, ...), ...]
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from utils.adapters import lora_identity
from utils.families import answer_logits_and_hidden
from utils.models import autocast, autocast_dtype_name
from utils.plumbing.files import atomic_directory, write_json_atomic
from utils.plumbing.measure import PeakMemory
from utils.plumbing.run_state import RunFolder, StepLog, fingerprint, restore_rng_state, rng_state, seed_rngs, step_progress
from utils.ppo import Rollout, decode_responses, prompt_indices, sample_responses, settings_with_reasons, why
from utils.ppo_terms import logprobs_from_logits
from utils.profiles import Profile

# A reward for GRPO: (summaries, dialogues) -> {component: one score per summary}, "reward" the total.
GroupReward = Callable[[list[str], list[str]], dict[str, list[float]]]


class GRPOPolicy(nn.Module):
    """pi (a model with its LoRA adapter) and pi_ref (the adapter switched off): PPO's policy without a value head."""

    def __init__(self, model: PeftModel):
        super().__init__()
        if not isinstance(model, PeftModel):
            raise TypeError("GRPO here needs a PEFT model (add_lora(model)): the reference is the adapter switched off.")
        self.model = model
        config = model.get_base_model().config
        self.is_encoder_decoder = bool(config.is_encoder_decoder)
        self.decoder_start_token_id = getattr(config, "decoder_start_token_id", None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def logprobs(self, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
        """log pi of each response token, (batch, length), float32; 0 on padding."""
        logits, _ = answer_logits_and_hidden(self.model, self.is_encoder_decoder, *rollout.tensors(),
                                             self.decoder_start_token_id)
        return logprobs_from_logits(logits.float() / temperature, rollout.response_ids, rollout.response_mask)

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
        """log pi_ref of each response token: the same network with its adapter disabled."""
        with self.model.disable_adapter():
            return self.logprobs(rollout, temperature)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


@dataclass
class GRPOConfig:
    """Settings of a GRPO run. `steps` and `checkpoint_every` may change between runs of one folder."""

    steps: int = why(10, "GRPO steps; each samples a group of responses for each of its prompts")
    prompts_per_step: int = why(4, "prompts per step")
    group_size: int = why(4, "G, responses sampled per prompt: the group each response is compared with")
    mini_batches: int = why(2, "gradient updates per step: after the first, the policy is no longer the one that "
                            "sampled, and the ratio clip holds it near")
    learning_rate: float = why(3e-4, "of the LoRA matrices")
    beta: float = why(0.04, "weight of the KL to the reference in each token's loss")
    clip_range: float = why(0.2, "epsilon of the ratio clip (PPO's and TRL's 0.2)")
    epsilon: float = why(1e-4, "added to the group's std, so a group of equal rewards divides 0 by a small number, "
                         "not by 0 (TRL's value)")
    max_grad_norm: float = why(1.0, "clips each update's gradient norm")
    max_new_tokens: int = why(32, "longest response sampled")
    min_new_tokens: int = why(0, "responses may end whenever the policy ends them")
    do_sample: bool = why(True, "the group must differ: GRPO learns from differences within it")
    top_k: int = why(0, "off: the ratio assumes the plain distribution of the policy")
    top_p: float = why(1.0, "off, for the same reason")
    temperature: float = why(1.0, "of sampling, and of the log-probabilities, so both are of one distribution")
    autocast_dtype: str | None = why(None, "None: float32. \"bfloat16\": the passes under bf16 autocast and sampling "
                                     "from a bf16 copy, as in PPO; the weights that train stay float32")
    checkpoint_every: int = why(5, "steps between checkpoints; an interrupted run resumes from the last")
    seed: int = why(42, "of sampling and prompt order, so a rerun samples the same")

    def __post_init__(self):
        if self.steps < 0 or self.checkpoint_every < 1 or self.prompts_per_step < 1:
            raise ValueError("steps must be >= 0, checkpoint_every and prompts_per_step >= 1.")
        if self.group_size < 2:
            raise ValueError("A group needs at least 2 responses: one alone has nothing to be compared with.")
        if (self.prompts_per_step * self.group_size) % self.mini_batches:
            raise ValueError(f"prompts_per_step x group_size ({self.prompts_per_step * self.group_size}) must split "
                             f"into {self.mini_batches} equal mini-batches.")


def grpo_config(profile: Profile, **overrides) -> GRPOConfig:
    """GRPOConfig from the profile's grpo_* settings (responses as long as PPO's), plus `overrides`."""
    config = GRPOConfig(
        steps=profile.grpo_steps,
        prompts_per_step=profile.grpo_prompts_per_step,
        group_size=profile.grpo_group_size,
        learning_rate=profile.grpo_learning_rate,
        beta=profile.grpo_beta,
        temperature=profile.grpo_temperature,
        max_new_tokens=profile.ppo_max_new_tokens,
        checkpoint_every=max(1, min(5, profile.grpo_steps)),
        autocast_dtype=autocast_dtype_name(profile),
        seed=profile.seed,
    )
    return replace(config, **overrides) if overrides else config


# --- the terms ----------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, epsilon: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage of each response, True for each response whose group's rewards are all equal).

    `rewards` holds the groups one after the other: G rewards of prompt 0, then G of prompt 1...
    The std is the sample std (n - 1), as TRL computes it.
    """
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    equal = torch.isclose(std, torch.zeros_like(std)).expand_as(groups)
    advantages = ((groups - mean) / (std + epsilon)).masked_fill(equal, 0.0)  # 0, not 0 / 0, when epsilon is 0
    return advantages.reshape(-1), equal.reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate r - log r - 1 with r = pi_ref / pi: never negative, unlike log(pi/pi_ref)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_token_losses(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor,
    clip_range: float, beta: float,
) -> dict[str, torch.Tensor]:
    """Each response token's loss and its parts, (batch, length) each: ratio, clipped objective, KL, loss."""
    ratio = torch.exp(logprobs - old_logprobs)
    advantage = advantages.unsqueeze(1)
    objective = torch.min(ratio * advantage, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantage)
    kl = k3_kl(logprobs, ref_logprobs)
    # The KL term is weighted by the ratio, as TRL does by default: the tokens were sampled from pi_old,
    # not pi, and the weight makes its gradient that of KL(pi || pi_ref) itself, even when the ratio is 1.
    return {"ratio": ratio, "objective": objective, "kl": kl, "loss": -objective + beta * ratio * kl}


def grpo_loss(token_losses: torch.Tensor, mask: torch.Tensor, tokens_per_update: float) -> torch.Tensor:
    """TRL's default aggregation ("dapo"): the sum of the token losses over the tokens per update of the step."""
    return (token_losses * mask).sum() / max(tokens_per_update, 1.0)


# --- one step and the run -----------------------------------------------------------------------

def repeat_groups(items: list, group_size: int) -> list:
    """Each item `group_size` times in a row: the layout of the groups."""
    return [item for item in items for _ in range(group_size)]


def grpo_step(
    policy: GRPOPolicy,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: torch.optim.Optimizer,
    reward_fn: GroupReward,
    prompts: list[str],
    dialogues: list[str],
    config: GRPOConfig,
) -> dict:
    """One GRPO step: sample a group per prompt, score, compare within groups, then `mini_batches` updates.

    Returns the step's log record (without "step" and "seconds"): the mean of each reward
    component, the KL, the share of responses in groups of equal rewards, the loss, and the texts.
    """
    rollout = sample_responses(policy, tokenizer, repeat_groups(prompts, config.group_size), config)
    texts = decode_responses(tokenizer, rollout)
    scores = reward_fn(texts, repeat_groups(dialogues, config.group_size))
    rewards = torch.tensor(scores["reward"], dtype=torch.float32, device=policy.device)
    advantages, equal = group_advantages(rewards, config.group_size, config.epsilon)

    size = len(rollout) // config.mini_batches
    with torch.no_grad(), autocast(policy.device, config.autocast_dtype):
        old_logprobs = torch.cat([policy.logprobs(rollout.select(slice(i, i + size)), config.temperature)
                                  for i in range(0, len(rollout), size)])
        ref_logprobs = torch.cat([policy.reference_logprobs(rollout.select(slice(i, i + size)), config.temperature)
                                  for i in range(0, len(rollout), size)])
    mask = rollout.response_mask.float()
    tokens_per_update = mask.sum().item() / config.mini_batches
    totals: dict[str, list[float]] = {"loss": [], "kl": [], "clip_fraction": []}
    order = torch.randperm(len(rollout))
    for start in range(0, len(rollout), size):
        rows = order[start : start + size]
        part, part_mask = rollout.select(rows), mask[rows]
        with autocast(policy.device, config.autocast_dtype):
            logprobs = policy.logprobs(part, config.temperature)
        terms = grpo_token_losses(logprobs, old_logprobs[rows], ref_logprobs[rows], advantages[rows],
                                  config.clip_range, config.beta)
        loss = grpo_loss(terms["loss"], part_mask, tokens_per_update)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), config.max_grad_norm)
        optimizer.step()
        clipped = ((terms["ratio"] - 1).abs() > config.clip_range).float()
        totals["loss"].append(loss.item())
        totals["kl"].append(((terms["kl"] * part_mask).sum() / part_mask.sum().clamp(min=1)).item())
        totals["clip_fraction"].append(((clipped * part_mask).sum() / part_mask.sum().clamp(min=1)).item())
    return {
        **{name: float(np.mean(values)) for name, values in scores.items()},  # each component, and "reward"
        "reward_std": rewards.std().item(),
        "zero_variance_share": equal.float().mean().item(),  # responses (so groups) that teach nothing
        "loss": float(np.sum(totals["loss"])),  # the step's loss: the updates' losses add up to it
        "kl": float(np.mean(totals["kl"])),  # per token, k3
        "clip_fraction": float(np.mean(totals["clip_fraction"])),
        "response_length": mask.sum(dim=1).mean().item(),
        "responses": texts,
    }


@dataclass
class GRPOResult(StepLog):
    """What a GRPO run produced: the trained policy and one log record per step."""

    policy: GRPOPolicy
    output_dir: Path
    history: list[dict] = field(default_factory=list)
    reused: bool = False
    resumed_from: int = 0
    peak_memory_mb: float | None = None  # of the steps trained in this process (reused: when first trained)

    def record(self, comparisons: dict[str, dict], rouge1_before: float, rouge1_after: float) -> dict:
        """The fields of results.json's "grpo" record: toxicity and each check's pass rate before and after
        with their paired intervals (`comparisons`: name -> utils.stats.paired_difference), ROUGE-1, time, memory."""
        toxicity = comparisons["toxicity"]
        fields = {"toxicity_before_mean": toxicity["before_mean"], "toxicity_after_mean": toxicity["after_mean"],
                  "toxicity_difference": toxicity["difference"], "ci_low": toxicity["ci_low"],
                  "ci_high": toxicity["ci_high"], "ci_excludes_zero": toxicity["excludes_zero"],
                  "test_dialogues": toxicity["n"], "seeds": toxicity["samples"]}
        for name, comparison in comparisons.items():
            if name != "toxicity":
                key = "pass_" + name.replace(" ", "_")
                fields.update({f"{key}_before": comparison["before_mean"], f"{key}_after": comparison["after_mean"],
                               f"{key}_ci_low": comparison["ci_low"], f"{key}_ci_high": comparison["ci_high"]})
        return {**fields, "rouge1_before": rouge1_before, "rouge1_after": rouge1_after, "grpo_steps": len(self.history),
                "seconds": self.train_seconds, "peak_memory_mb": self.peak_memory_mb}


CHECKPOINT_STATE = "state.json"  # the file a GRPO checkpoint writes last


def run_fingerprint(policy: GRPOPolicy, tokenizer: PreTrainedTokenizerBase, reward_fn: GroupReward,
                    prompts: list[str], dialogues: list[str], config: GRPOConfig) -> str:
    """The settings (all but steps and checkpoint_every), the LoRA policy's identity, the reward's name, the prompts."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("steps", "checkpoint_every")}
    identity = {
        "settings": settings,
        **lora_identity(policy.model, tokenizer),
        "reward": str(getattr(reward_fn, "name", getattr(reward_fn, "__qualname__", type(reward_fn).__qualname__))),
        "prompts": hashlib.sha256("\x00".join(prompts + dialogues).encode("utf-8")).hexdigest(),
    }
    return fingerprint(identity)


def save_checkpoint(folder: Path, policy: GRPOPolicy, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Adapter, optimizer and run state together; an interruption leaves the previous checkpoint."""
    with atomic_directory(folder) as staging:
        save_file(get_peft_model_state_dict(policy.model), str(staging / "adapter_model.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        write_json_atomic(staging / CHECKPOINT_STATE, state)


def load_checkpoint(folder: Path, policy: GRPOPolicy, optimizer: torch.optim.Optimizer | None) -> None:
    """Load a checkpoint's adapter (and optimizer state) in place."""
    device = str(policy.device)
    set_peft_model_state_dict(policy.model, load_file(str(folder / "adapter_model.safetensors"), device=device))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))


def train_grpo(
    policy: GRPOPolicy,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: GroupReward,
    prompts: list[str],
    dialogues: list[str],
    config: GRPOConfig,
    output_dir: str | os.PathLike,
) -> GRPOResult:
    """Train `policy` with GRPO to raise `reward_fn(summaries, dialogues)["reward"]`, checkpointing into `output_dir`.

    `dialogues[i]` is what the reward reads beside the response to `prompts[i]`. A rerun with the
    same settings resumes from the last checkpoint, or loads the finished run without training;
    a folder from other settings is set aside or discarded (utils.plumbing.run_state).
    """
    if len(dialogues) != len(prompts):
        raise ValueError(f"{len(dialogues)} dialogues for {len(prompts)} prompts: give one per prompt.")
    output_dir = Path(output_dir)
    run = RunFolder(output_dir, run_fingerprint(policy, tokenizer, reward_fn, prompts, dialogues, config), "GRPO run")
    run.claim()
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.learning_rate, weight_decay=0.0)
    history: list[dict] = []
    start_step = 0
    last, state, finished = run.resume_point(config.steps, CHECKPOINT_STATE)
    if finished is not None:
        load_checkpoint(last, policy, optimizer=None)
        print(f"Reusing the finished GRPO run in {output_dir} (delete the folder to train again).")
        return GRPOResult(policy, output_dir, state["history"], reused=True, resumed_from=state["step"],
                          peak_memory_mb=finished.get("peak_memory_mb"))
    if state is not None:
        load_checkpoint(last, policy, optimizer)
        print(f"Resuming from step {state['step']}")
        start_step, history = state["step"], state["history"]
        restore_rng_state(state["rng"])
    else:
        seed_rngs(config.seed)

    policy.eval()  # no dropout: the policy that samples and the one being updated must be the same function
    progress = step_progress("GRPO", start_step, config.steps)
    with PeakMemory(policy.device) as memory:
        for step in progress:
            started = time.perf_counter()
            indices = prompt_indices(len(prompts), config.prompts_per_step, step, config.seed)
            record = {"step": step + 1, **grpo_step(policy, tokenizer, optimizer, reward_fn, [prompts[i] for i in indices],
                                                    [dialogues[i] for i in indices], config)}
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            progress.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.3f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                checkpoint = run.checkpoint_folder(step + 1)
                save_checkpoint(checkpoint, policy, optimizer, {"step": step + 1, "history": history, "rng": rng_state()})
                run.keep_only(checkpoint)
    run.finish({"steps": config.steps, "peak_memory_mb": memory.peak_mb})
    return GRPOResult(policy, output_dir, history, reused=False, resumed_from=start_step, peak_memory_mb=memory.peak_mb)
