"""Proximal Policy Optimization (PPO) for a LoRA-adapted language model: the policy, rollouts and the loop.

pi is the model with its LoRA adapter, pi_ref the same network with the adapter switched off
(no second copy of the model), and the value of each response position comes from a small
linear head on the model's last hidden state. The terms of the objective (KL-penalised
rewards, GAE, the clipped losses) are in utils.ppo_terms.

Use::

    policy = PolicyWithValueHead(add_lora(model, rank=16))
    result = train_ppo(policy, tokenizer, scorer.reward, prompts, PPOConfig(steps=50), output_dir)
    result.series("reward_mean")    # [(1, ...), (2, ...), ...]
    result.history[0]["responses"]  # the texts step 1 sampled and scored

A reward function that reads the prompt too (a reward model of (dialogue, summary) pairs) gets
it through `reward_prompts`: one text per prompt, passed as `reward_fn(texts, prompts=...)`.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.adapters import lora_identity
from utils.families import answer_logits_and_hidden, generated_answer, prompt_padding_side
from utils.generation import end_of_sequence_ids
from utils.models import autocast, inference_copy
from utils.plumbing.files import atomic_directory, write_json_atomic
from utils.plumbing.measure import PeakMemory
from utils.plumbing.run_state import RunFolder, StepLog, fingerprint, restore_rng_state, rng_state, seed_rngs, step_progress
from utils.ppo_terms import (
    AdaptiveKLController,
    FixedKLController,
    ScoreNormalizer,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_advantages,
    kl_penalized_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    per_token_kl,
)
from utils.prompts import encode

# --- the policy: a LoRA model plus a value head ------------------------------------------------


class ValueHead(nn.Module):
    """V(s_t): one linear layer (no dropout) from the hidden state of a response position to a number.

    It starts at zero, so every value is 0 at first: a random start would predict large values
    from large hidden states, and the value loss, whose gradient also reaches the LoRA matrices
    through the hidden states, would then swamp the policy loss in the first steps.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, length, hidden) -> (batch, length), in float32 whatever the model's dtype."""
        return self.linear(hidden_states.float()).squeeze(-1)


class PolicyWithValueHead(nn.Module):
    """The trained policy pi (model + LoRA adapter), its value head, and pi_ref (the adapter switched off)."""

    def __init__(self, model: PeftModel, value_head: ValueHead | None = None):
        super().__init__()
        if not isinstance(model, PeftModel):
            raise TypeError(
                "PPO here needs a PEFT model (add_lora(model)): the reference policy is the adapter switched off."
            )
        self.model = model
        config = model.get_base_model().config
        self.is_encoder_decoder = bool(config.is_encoder_decoder)
        self.decoder_start_token_id = getattr(config, "decoder_start_token_id", None)
        if value_head is None:
            value_head = ValueHead(config.get_text_config().hidden_size)
        self.value_head = value_head.to(model.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(
        self, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, values) for each response position: (batch, length, vocab) and (batch, length)."""
        logits, hidden = answer_logits_and_hidden(
            self.model, self.is_encoder_decoder, query_ids, query_mask, response_ids, response_mask,
            self.decoder_start_token_id,
        )
        return logits, self.value_head(hidden) * response_mask

    @torch.no_grad()
    def reference_logprobs(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """log pi_ref of each response token (float32): the same network with its LoRA adapter disabled."""
        with self.model.disable_adapter():
            logits, _ = answer_logits_and_hidden(
                self.model, self.is_encoder_decoder, query_ids, query_mask, response_ids, response_mask,
                self.decoder_start_token_id,
            )
        return logprobs_from_logits(logits.float() / temperature, response_ids, response_mask)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA matrices and the value head: everything the optimizer updates."""
        return [p for p in self.parameters() if p.requires_grad]


# --- configuration and rollouts -------------------------------------------------------------


def why(default, reason: str):
    """A PPOConfig field with the reason for its value, which `settings_with_reasons` shows."""
    return field(default=default, metadata={"why": reason})


@dataclass
class PPOConfig:
    """Settings of a PPO run. `steps` and `checkpoint_every` may change between runs of one folder."""

    steps: int = why(20, "PPO steps; each samples one batch of prompts")
    batch_size: int = why(16, "prompts (and responses) per step: the samples one update learns from")
    mini_batch_size: int = why(4, "responses per gradient update: what fits in memory with the model's activations")
    ppo_epochs: int = why(1, "passes over each batch; more reuse each sample, and move the policy further per step")
    learning_rate: float = why(1.41e-5, "of the LoRA matrices and the value head")
    weight_decay: float = why(0.0, "none: the adapter starts at zero, and decay would pull it back there")
    max_grad_norm: float = why(1.0, "clips each update's gradient norm, so one unlucky batch cannot wreck the policy")
    clip_range: float = why(0.2, "epsilon of the ratio clip, the PPO paper's: a token's probability ratio counts only "
                            "within 1 +- 0.2")
    value_clip_range: float = why(0.2, "a value may move at most 0.2 from its old estimate per update, in units of "
                                  "the normalised score (std 1), so about a fifth of the rewards' spread")
    value_loss_coef: float = why(0.1, "weight of the value loss: its gradient reaches the shared LoRA matrices too")
    entropy_coef: float = why(0.0, "no entropy bonus: the KL penalty already keeps the policy near the summarizer")
    normalize_scores: bool = why(True, "scores to mean 0, std 1 (running): the clip, KL coefficient and value head "
                                 "then work at one scale whatever the reward model's units")
    init_kl_coef: float = why(0.2, "beta at the start, TRL's initial value, from which the controller moves it; the "
                              "penalty per token is beta x log(pi / pi_ref); 0.0 with adaptive_kl off switches it off")
    adaptive_kl: bool = why(True, "beta follows the KL: up when the policy drifts past target_kl, down when below")
    target_kl: float = why(6.0, "the per-response KL from the reference the controller aims at (nats)")
    kl_horizon: float = why(10000, "samples over which beta corrects fully: proportional to the run, so beta moves "
                          "within it (see run_scaled_kl_horizon)")
    gamma: float = why(1.0, "no discount: the only score comes at the end of the response")
    lam: float = why(0.95, "GAE's lambda, the PPO paper's: mostly the sampled return, a little of the value head's "
                     "estimate")
    whiten_advantages: bool = why(True, "advantages to mean 0, std 1 per batch: the policy loss has one scale")
    # Sampling: by default the plain distribution of the policy, which is what PPO's maths assumes.
    max_new_tokens: int = why(32, "longest response sampled")
    min_new_tokens: int = why(0, "responses may end whenever the policy ends them")
    do_sample: bool = why(True, "PPO learns from the policy's own samples, not its greedy text")
    top_k: int = why(0, "off: PPO's ratios assume the plain distribution of the policy")
    top_p: float = why(1.0, "off, for the same reason")
    temperature: float = why(1.0, "of sampling, and of the log-probabilities, so both are of one distribution")
    autocast_dtype: str | None = why(None, "None: float32 throughout. \"bfloat16\": the log-probability passes and "
                                     "updates under bf16 autocast, where the hardware computes it (the profile's "
                                     "mixed precision), and sampling from a bf16 copy of the policy; the weights "
                                     "that train stay float32")
    checkpoint_every: int = why(10, "steps between checkpoints; an interrupted run resumes from the last")
    seed: int = why(42, "of sampling and prompt order, so a rerun samples the same")

    def __post_init__(self):
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size})."
            )
        if self.steps < 0 or self.checkpoint_every < 1 or self.ppo_epochs < 1:
            raise ValueError("steps must be >= 0, checkpoint_every and ppo_epochs >= 1.")

    def kl_controller(self) -> AdaptiveKLController | FixedKLController:
        if self.adaptive_kl:
            return AdaptiveKLController(self.init_kl_coef, self.target_kl, self.kl_horizon)
        return FixedKLController(self.init_kl_coef)


def settings_with_reasons(config, reasons: dict[str, str] | None = None) -> list[dict]:
    """Each setting of `config` (PPOConfig, GRPOConfig: fields made with `why`) with its value and the reason
    for it: rows for a table.

    `reasons` ({setting: reason}, e.g. a profile's) give the reasons for the values a caller chose;
    the other settings keep the course's value and its reason.
    """
    reasons = reasons or {}
    return [{"setting": item.name, "value": getattr(config, item.name),
             "why": reasons.get(item.name, item.metadata["why"])} for item in fields(config)]


KL_CORRECTIONS_PER_RUN = 5  # a run holds 5 horizons: beta can change by up to e^(0.2 x 5) = 2.7x either way


def run_scaled_kl_horizon(steps: int, batch_size: int) -> float:
    """The adaptive KL controller's horizon (in samples) for a run of steps x batch_size samples.

    Each step multiplies beta by 1 + error x batch_size / horizon, with error clipped to +-0.2. With
    TRL's horizon of 10,000 samples and a run of 20 steps of 8, beta could change by 0.3%: it would
    look fixed. A fifth of the run's samples lets it move by up to 2.7x over the run (5% a step
    in 20 steps); runs under 5 steps get the horizon of 5 steps, so one step moves it by 20% at most.
    """
    return max(steps, KL_CORRECTIONS_PER_RUN) * batch_size / KL_CORRECTIONS_PER_RUN


@dataclass
class Rollout:
    """Prompts and the responses sampled for them, as token ids: the query left- or right-padded
    as the family generates, the response right-padded; masks are 1 on real tokens."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor

    def __len__(self) -> int:
        return self.query_ids.shape[0]

    def select(self, rows: torch.Tensor | slice) -> Rollout:
        """The rollout of some rows only (a mini-batch), without the prompt columns that are padding in all of them.

        The batch's prompts were padded to its longest; a mini-batch of shorter ones need not read
        that padding. Positions count real tokens only (`answer_logits_and_hidden`), so the
        outputs are the same. The response keeps its width: per-token figures line up across mini-batches.
        """
        query_mask = self.query_mask[rows]
        columns = query_mask.any(dim=0)
        return Rollout(self.query_ids[rows][:, columns], query_mask[:, columns], self.response_ids[rows],
                       self.response_mask[rows])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.query_ids, self.query_mask, self.response_ids, self.response_mask


def response_mask_until_eos(response_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """1 up to and including the first end-of-sequence token, 0 after it (the padding generate() adds)."""
    is_eos = torch.isin(response_ids, torch.tensor(list(eos_ids), device=response_ids.device)).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


@torch.no_grad()
def sample_responses(
    policy: PolicyWithValueHead, tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: PPOConfig
) -> Rollout:
    """Sample one response per prompt from the current policy; keeps the sampled token ids.

    Padding as in utils.generation: decoder-only prompts on the left, so every prompt ends
    where its response starts; encoder-decoder prompts on the right. Under autocast the samples
    come from a merged copy of the policy in the autocast dtype (`utils.models.inference_copy`): the
    log-probabilities, ratios and KL penalty still come from the autocast passes over the policy.
    """
    model = inference_copy(policy.model, config.autocast_dtype)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = prompt_padding_side(policy.is_encoder_decoder)
    try:
        query = encode(tokenizer, prompts, policy.is_encoder_decoder, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous_side
    query = query.to(policy.device)
    options = dict(
        do_sample=config.do_sample, max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id
    )
    if config.do_sample:
        options.update(top_k=config.top_k, top_p=config.top_p, temperature=config.temperature)
    if config.min_new_tokens:
        options["min_new_tokens"] = config.min_new_tokens
    generated = model.generate(input_ids=query["input_ids"], attention_mask=query["attention_mask"], **options)
    response_ids = generated_answer(generated, query["input_ids"].shape[1], policy.is_encoder_decoder)
    response_mask = response_mask_until_eos(response_ids, end_of_sequence_ids(model, tokenizer))
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    return Rollout(query["input_ids"], query["attention_mask"], response_ids, response_mask)


def decode_responses(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """The text of each response (its real tokens, special tokens left out), for the reward model."""
    rows = zip(rollout.response_ids, rollout.response_mask)
    return [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).strip() for ids, mask in rows]


def prompt_indices(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Which prompts step `step` uses: the prompts in a seeded random order, a new order on each pass."""
    indices = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n_prompts)
        order = list(range(n_prompts))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        indices.append(order[offset])
    return indices


# --- training ---------------------------------------------------------------------------------

@dataclass
class PPOResult(StepLog):
    """What a PPO run produced: the trained policy and one log record per step."""

    policy: PolicyWithValueHead
    output_dir: Path
    history: list[dict] = field(default_factory=list)
    reused: bool = False  # True when the finished run was loaded instead of trained
    resumed_from: int = 0  # the step training continued from (0: from the start)
    peak_memory_mb: float | None = None  # of the steps trained in this process (reused: when first trained)


def run_fingerprint(
    policy: PolicyWithValueHead,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: Callable,
    prompts: list[str],
    config: PPOConfig,
    reward_prompts: list[str] | None = None,
) -> str:
    """What makes two runs the same run: the settings (all but steps and checkpoint_every), the model's
    name, the adapter's shape, the reward function's name and the prompts (not the weights themselves)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("steps", "checkpoint_every")}
    reward_owner = getattr(reward_fn, "__self__", reward_fn)
    identity = {
        "settings": settings,
        **lora_identity(policy.model, tokenizer),
        "reward": [getattr(reward_fn, "__qualname__", type(reward_fn).__qualname__),
                   str(getattr(reward_owner, "name", ""))],
        "prompts": hashlib.sha256("\x00".join(prompts).encode("utf-8")).hexdigest(),
    }
    if reward_prompts is not None:
        identity["reward_prompts"] = hashlib.sha256("\x00".join(reward_prompts).encode("utf-8")).hexdigest()
    return fingerprint(identity)


def save_checkpoint(
    folder: Path, policy: PolicyWithValueHead, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Write adapter, value head, optimizer and run state together; an interruption leaves the previous checkpoint."""
    with atomic_directory(folder) as staging:
        save_file(get_peft_model_state_dict(policy.model), str(staging / "adapter_model.safetensors"))
        save_file(policy.value_head.state_dict(), str(staging / "value_head.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        write_json_atomic(staging / CHECKPOINT_STATE, state)


def load_checkpoint(folder: Path, policy: PolicyWithValueHead, optimizer: torch.optim.Optimizer | None) -> None:
    """Load a checkpoint's weights (and optimizer state) into `policy` (and `optimizer`) in place."""
    device = str(policy.device)
    set_peft_model_state_dict(policy.model, load_file(str(folder / "adapter_model.safetensors"), device=device))
    policy.value_head.load_state_dict(load_file(str(folder / "value_head.safetensors"), device=device))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))


CHECKPOINT_STATE = "state.json"  # the file a PPO checkpoint writes last


@torch.no_grad()
def score_rollout(
    policy: PolicyWithValueHead, rollout: Rollout, config: PPOConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(old_logprobs, ref_logprobs, old_values) of the sampled responses, mini-batch by mini-batch."""
    old_logprobs, ref_logprobs, old_values = [], [], []
    for start in range(0, len(rollout), config.mini_batch_size):
        part = rollout.select(slice(start, start + config.mini_batch_size))
        with autocast(policy.device, config.autocast_dtype):
            logits, values = policy(*part.tensors())
            ref_logprobs.append(policy.reference_logprobs(*part.tensors(), temperature=config.temperature))
        old_logprobs.append(logprobs_from_logits(logits.float() / config.temperature, part.response_ids,
                                                 part.response_mask))
        old_values.append(values.float())
    return torch.cat(old_logprobs), torch.cat(ref_logprobs), torch.cat(old_values)


def ppo_update(
    policy: PolicyWithValueHead,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    config: PPOConfig,
) -> dict[str, float]:
    """ppo_epochs passes of shuffled mini-batches: loss = policy loss + c_v * value loss - c_e * entropy."""
    parameters = policy.trainable_parameters()
    totals: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [],
                                      "value_clip_fraction": [], "entropy": []}
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(rollout))
        for start in range(0, len(rollout), config.mini_batch_size):
            rows = order[start : start + config.mini_batch_size]
            part = rollout.select(rows)
            mask = part.response_mask
            with autocast(policy.device, config.autocast_dtype):
                logits, values = policy(*part.tensors())
            logits, values = logits.float() / config.temperature, values.float()
            logprobs = logprobs_from_logits(logits, part.response_ids, mask)
            entropy = masked_mean(entropy_from_logits(logits), mask)
            policy_loss, clip_fraction = clipped_policy_loss(
                logprobs, old_logprobs[rows], advantages[rows], mask, config.clip_range
            )
            value_loss, value_clip_fraction = clipped_value_loss(
                values, old_values[rows], returns[rows], mask, config.value_clip_range
            )
            loss = policy_loss + config.value_loss_coef * value_loss - config.entropy_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            totals["policy_loss"].append(policy_loss.item())
            totals["value_loss"].append(value_loss.item())
            totals["clip_fraction"].append(clip_fraction.item())
            totals["value_clip_fraction"].append(value_clip_fraction.item())
            totals["entropy"].append(entropy.item())
    return {key: sum(values) / len(values) for key, values in totals.items()}


def ppo_step(
    policy: PolicyWithValueHead,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: torch.optim.Optimizer,
    kl_controller: AdaptiveKLController | FixedKLController,
    reward_fn: Callable[..., list[float]],
    prompts: list[str],
    config: PPOConfig,
    reward_prompts: list[str] | None = None,
    score_normalizer: ScoreNormalizer | None = None,
) -> dict:
    """One PPO step on a batch of prompts: sample, score, penalise the KL, estimate advantages, update.

    `reward_prompts`: what the reward function reads as each response's prompt (e.g. the bare
    dialogue), passed as `reward_fn(texts, prompts=reward_prompts)`; None calls `reward_fn(texts)`.
    `score_normalizer`: takes in this batch's scores and normalises them (None: the raw scores).
    Returns the step's log record (without "step" and "seconds"): numbers, and the sampled
    response texts under "responses".
    """
    rollout = sample_responses(policy, tokenizer, prompts, config)
    texts = decode_responses(tokenizer, rollout)
    if reward_prompts is None:
        raw_scores = reward_fn(texts)
    else:
        if len(reward_prompts) != len(prompts):
            raise ValueError(f"{len(reward_prompts)} reward prompts for {len(prompts)} prompts: give one per prompt.")
        raw_scores = reward_fn(texts, prompts=list(reward_prompts))
    scores = torch.tensor(raw_scores, dtype=torch.float32, device=policy.device)
    if scores.shape != (len(texts),):
        raise ValueError(f"reward_fn must return one number per text: {tuple(scores.shape)} for {len(texts)} texts.")
    mask = rollout.response_mask
    if score_normalizer is not None:
        score_normalizer.update(scores)
        scores_used = score_normalizer.normalize(scores)
    else:
        scores_used = scores

    old_logprobs, ref_logprobs, old_values = score_rollout(policy, rollout, config)
    rewards = kl_penalized_rewards(scores_used, old_logprobs, ref_logprobs, mask, kl_controller.value)
    advantages, returns = gae_advantages(rewards, old_values, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    losses = ppo_update(policy, optimizer, rollout, old_logprobs, old_values, advantages, returns, config)

    kl = per_token_kl(old_logprobs, ref_logprobs, mask).sum(dim=1).mean().item()  # per response
    record = {
        "reward_mean": scores.mean().item(),  # the reward model's own units
        "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
        "score_used_mean": scores_used.mean().item(),  # after normalisation: what PPO optimised
        "kl": kl,
        "kl_coef": kl_controller.value,  # the coefficient this step used
        **losses,
        "response_length": mask.sum(dim=1).float().mean().item(),
        "responses": texts,
    }
    kl_controller.update(kl, n_steps=len(texts))
    return record


def train_ppo(
    policy: PolicyWithValueHead,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: Callable[..., list[float]],
    prompts: list[str],
    config: PPOConfig,
    output_dir: str | os.PathLike,
    callback: Callable[[dict], None] | None = None,
    reward_prompts: list[str] | None = None,
) -> PPOResult:
    """Train `policy` with PPO to raise `reward_fn(response_texts)`, checkpointing into `output_dir`.

    Rerunning with the same settings resumes from the last checkpoint (or, when every step is
    done, loads the result without training); a folder from other settings is discarded.
    `callback(record)` is called with each step's log record. `reward_prompts` (one per prompt)
    are passed to the reward function as `prompts=`: see `ppo_step`.
    """
    output_dir = Path(output_dir)
    if reward_prompts is not None and len(reward_prompts) != len(prompts):
        raise ValueError(f"{len(reward_prompts)} reward prompts for {len(prompts)} prompts: give one per prompt.")
    run = RunFolder(output_dir, run_fingerprint(policy, tokenizer, reward_fn, prompts, config, reward_prompts),
                    "PPO run")
    run.claim()
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    kl_controller = config.kl_controller()
    score_normalizer = ScoreNormalizer() if config.normalize_scores else None
    history: list[dict] = []
    start_step = 0

    last, state, finished = run.resume_point(config.steps, CHECKPOINT_STATE)
    if finished is not None:
        load_checkpoint(last, policy, optimizer=None)
        print(f"Reusing the finished PPO run in {output_dir} (delete the folder to train again).")
        return PPOResult(policy, output_dir, state["history"], reused=True, resumed_from=state["step"],
                         peak_memory_mb=finished.get("peak_memory_mb"))
    if state is not None:
        load_checkpoint(last, policy, optimizer)
        print(f"Resuming from step {state['step']}")
        start_step = state["step"]
        history = state["history"]
        kl_controller.value = state["kl_coef"]
        if score_normalizer is not None:
            score_normalizer.load_state_dict(state["score_normalizer"])
        restore_rng_state(state["rng"])
    else:
        seed_rngs(config.seed)

    policy.eval()  # no dropout: the policy that samples and the one being updated must be the same function
    progress = step_progress("PPO", start_step, config.steps)
    with PeakMemory(policy.device) as memory:
        for step in progress:
            started = time.perf_counter()
            indices = prompt_indices(len(prompts), config.batch_size, step, config.seed)
            batch = [prompts[i] for i in indices]
            batch_reward_prompts = None if reward_prompts is None else [reward_prompts[i] for i in indices]
            record = {"step": step + 1, **ppo_step(policy, tokenizer, optimizer, kl_controller, reward_fn, batch, config,
                                                   batch_reward_prompts, score_normalizer)}
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            progress.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.2f}")
            if callback is not None:
                callback(record)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                run_state = {"step": step + 1, "kl_coef": kl_controller.value, "history": history, "rng": rng_state(),
                             "score_normalizer": None if score_normalizer is None else score_normalizer.state_dict()}
                checkpoint = run.checkpoint_folder(step + 1)
                save_checkpoint(checkpoint, policy, optimizer, run_state)
                run.keep_only(checkpoint)
    run.finish({"steps": config.steps, "peak_memory_mb": memory.peak_mb})
    return PPOResult(policy, output_dir, history, reused=False, resumed_from=start_step, peak_memory_mb=memory.peak_mb)
