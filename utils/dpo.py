"""Direct preference optimization (DPO; Rafailov et al., 2023): learning from pairs of responses.

For a prompt x, a preferred response y_w ("chosen") and a worse one y_l ("rejected"):

    margin = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    loss   = -log sigmoid(beta * margin)

DPO needs no reward model and no sampling: the implicit reward of a response is
beta * (log pi - log pi_ref), and the loss is the Bradley-Terry loss of notebook 07 applied to it.
The reference is the policy with its LoRA adapter switched off, as in PPO (utils.ppo).

The log-probability of a response is the sum over its tokens of the same per-token
log-probabilities PPO uses (utils.families.answer_logits_and_hidden, utils.ppo_terms), for both
families: TRL's DPOTrainer supports decoder-only models only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from utils.adapters import lora_identity
from utils.families import answer_ids, answer_logits_and_hidden, prompt_padding_side
from utils.models import autocast
from utils.plumbing.files import atomic_directory, write_json_atomic
from utils.plumbing.measure import PeakMemory
from utils.plumbing.run_state import RunFolder, StepLog, fingerprint, restore_rng_state, rng_state, seed_rngs, step_progress
from utils.ppo import prompt_indices, why
from utils.ppo_terms import logprobs_from_logits
from utils.prompts import encode


def sequence_logprobs(
    model: torch.nn.Module,
    is_encoder_decoder: bool,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    decoder_start_token_id: int | None = None,
) -> torch.Tensor:
    """log pi(response | query) of each row: the sum of its tokens' log-probabilities, shape (batch,).

    Queries are padded as the family generates (left for decoder-only), responses right-padded;
    masks are 1 on real tokens.
    """
    logits, _ = answer_logits_and_hidden(
        model, is_encoder_decoder, query_ids, query_mask, response_ids, response_mask, decoder_start_token_id
    )
    return logprobs_from_logits(logits, response_ids, response_mask).sum(dim=1)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards) of a batch of pairs.

    Each reward is beta * (log pi - log pi_ref) of one response: how much more likely the policy
    made it than the reference did. The loss falls as the chosen reward rises above the rejected one.
    """
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


@dataclass
class DPOConfig:
    """Settings of a DPO run. `steps` and `checkpoint_every` may change between runs of one folder."""

    steps: int = why(20, "optimizer steps; each reads one batch of preference pairs")
    batch_size: int = why(8, "pairs per step (the chosen and the rejected response of each)")
    learning_rate: float = why(3e-4, "of the LoRA matrices: a fresh adapter starts at zero and must move")
    beta: float = why(0.1, "strength of the pull towards the reference: the implicit KL penalty (the DPO paper's 0.1)")
    max_grad_norm: float = why(1.0, "clips each update's gradient norm, so one batch cannot wreck the policy")
    max_response_tokens: int = why(64, "longest response read; longer ones are cut")
    autocast_dtype: str | None = why(None, "None: float32 throughout. \"bfloat16\": the log-probability passes "
                                     "under bf16 autocast, where the hardware computes it (the profile's mixed "
                                     "precision); the weights stay float32")
    checkpoint_every: int = why(10, "steps between checkpoints; an interrupted run resumes from the last")
    seed: int = why(42, "of the order of the pairs, so a rerun reads the same batches")

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps must be >= 0, batch_size and checkpoint_every >= 1.")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, not {self.beta}.")


@dataclass
class PreferencePairs:
    """Prompts with a chosen and a rejected response each (texts)."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]

    def __post_init__(self):
        if not (len(self.prompts) == len(self.chosen) == len(self.rejected)) or not self.prompts:
            raise ValueError(f"Pairs need one chosen and one rejected response per prompt: {len(self.prompts)} "
                             f"prompts, {len(self.chosen)} chosen, {len(self.rejected)} rejected.")

    def __len__(self) -> int:
        return len(self.prompts)


def pair_tensors(
    tokenizer: PreTrainedTokenizerBase, pairs: PreferencePairs, rows: list[int], is_encoder_decoder: bool,
    max_response_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(query ids, query mask, response ids, response mask) of the chosen responses of `rows`, then the rejected.

    Queries padded as the family generates; responses right-padded, each ending with the end-of-sequence token.
    """
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = prompt_padding_side(is_encoder_decoder)
    try:
        prompts = [pairs.prompts[i] for i in rows]
        query = encode(tokenizer, prompts + prompts, is_encoder_decoder, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous_side
    texts = [pairs.chosen[i] for i in rows] + [pairs.rejected[i] for i in rows]
    answers = answer_ids(tokenizer, texts, max_response_tokens, is_encoder_decoder)
    width = max(len(a) for a in answers)
    response_ids = torch.tensor([a + [tokenizer.pad_token_id] * (width - len(a)) for a in answers])
    response_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
    return query["input_ids"], query["attention_mask"], response_ids, response_mask


def dpo_step(model: PeftModel, tokenizer: PreTrainedTokenizerBase, optimizer: torch.optim.Optimizer,
             pairs: PreferencePairs, rows: list[int], config: DPOConfig,
             reference_logprobs: dict[int, list[float]] | None = None) -> dict:
    """One optimizer step on the pairs `rows`; returns the step's log record (without "step" and "seconds").

    `reference_logprobs` maps a pair's index to log pi_ref of its [chosen, rejected] responses. The
    reference never changes, so they are computed the first time a pair is read, kept there, and
    read back whenever the pair comes again (None: computed every step).
    """
    is_encoder_decoder = model.config.is_encoder_decoder
    start = model.config.decoder_start_token_id if is_encoder_decoder else None
    tensors = [t.to(model.device) for t in pair_tensors(tokenizer, pairs, rows, is_encoder_decoder,
                                                         config.max_response_tokens)]
    known = {} if reference_logprobs is None else reference_logprobs
    with autocast(model.device, config.autocast_dtype):
        if any(i not in known for i in rows):
            with torch.no_grad(), model.disable_adapter():
                computed = sequence_logprobs(model, is_encoder_decoder, *tensors, start)
            for i, chosen, rejected in zip(rows, *computed.chunk(2)):
                known.setdefault(i, [chosen.item(), rejected.item()])
        logps = sequence_logprobs(model, is_encoder_decoder, *tensors, start)
    ref_logps = torch.tensor([known[i][0] for i in rows] + [known[i][1] for i in rows], device=model.device)
    loss, chosen_rewards, rejected_rewards = dpo_loss(*logps.chunk(2), *ref_logps.chunk(2), beta=config.beta)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
    optimizer.step()
    margins = chosen_rewards - rejected_rewards
    return {
        "loss": loss.item(),
        "chosen_reward": chosen_rewards.mean().item(),  # beta x (log pi - log pi_ref) of the chosen responses
        "rejected_reward": rejected_rewards.mean().item(),
        "margin": margins.mean().item(),
        "accuracy": (margins > 0).float().mean().item(),  # share of pairs the policy now ranks right
    }


@dataclass
class DPOResult(StepLog):
    model: PeftModel
    output_dir: Path
    history: list[dict] = field(default_factory=list)
    reused: bool = False
    resumed_from: int = 0
    peak_memory_mb: float | None = None  # of the steps trained in this process (reused: when first trained)


CHECKPOINT_STATE = "state.json"  # the file a DPO checkpoint writes last


def run_fingerprint(model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: PreferencePairs,
                    config: DPOConfig) -> str:
    """The settings (all but steps and checkpoint_every), the model's name, the adapter's shape and the pairs."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("steps", "checkpoint_every")}
    texts = "\x00".join(pairs.prompts + pairs.chosen + pairs.rejected)
    identity = {
        **lora_identity(model, tokenizer),
        "pairs": hashlib.sha256(texts.encode("utf-8")).hexdigest(),
    }
    return fingerprint(settings, str(identity))


def save_checkpoint(folder: Path, model: PeftModel, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Adapter, optimizer and run state together; an interruption leaves the previous checkpoint."""
    with atomic_directory(folder) as staging:
        save_file(get_peft_model_state_dict(model), str(staging / "adapter_model.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        write_json_atomic(staging / CHECKPOINT_STATE, state)


def load_checkpoint(folder: Path, model: PeftModel, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load a checkpoint's adapter (and optimizer state) in place; return its run state."""
    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors"), device=str(model.device)))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=model.device, weights_only=True))
    return read_state(folder)


def read_state(checkpoint: Path) -> dict:
    """The run state (step, history, RNG, the reference's log-probabilities so far) a checkpoint holds."""
    return json.loads((checkpoint / CHECKPOINT_STATE).read_text(encoding="utf-8"))


def train_dpo(model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: PreferencePairs, config: DPOConfig,
              output_dir: str | os.PathLike) -> DPOResult:
    """Train `model`'s LoRA adapter with DPO on `pairs`, the reference being the adapter switched off.

    Checkpoints go to `output_dir`: a rerun with the same settings resumes from the last one, or
    loads the finished run without training; a folder from other settings is discarded.
    """
    output_dir = Path(output_dir)
    run = RunFolder(output_dir, run_fingerprint(model, tokenizer, pairs, config), "DPO run")
    run.claim()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    history: list[dict] = []
    reference_logprobs: dict[int, list[float]] = {}  # by pair: the reference's, computed once (dpo_step)
    start_step = 0
    last, state, finished = run.resume_point(config.steps, CHECKPOINT_STATE)
    if finished is not None:
        load_checkpoint(last, model, optimizer=None)
        print(f"Reusing the finished DPO run in {output_dir} (delete the folder to train again).")
        return DPOResult(model, output_dir, state["history"], reused=True, resumed_from=state["step"],
                         peak_memory_mb=finished.get("peak_memory_mb"))
    if state is not None:
        load_checkpoint(last, model, optimizer)
        print(f"Resuming from step {state['step']}")
        start_step, history = state["step"], state["history"]
        reference_logprobs = {int(i): logps for i, logps in state.get("reference_logprobs", {}).items()}
        restore_rng_state(state["rng"])
    else:
        seed_rngs(config.seed)

    model.eval()  # no dropout: the policy and its reference must differ by the adapter alone
    progress = step_progress("DPO", start_step, config.steps)
    with PeakMemory(model.device) as memory:
        for step in progress:
            started = time.perf_counter()
            rows = prompt_indices(len(pairs), config.batch_size, step, config.seed)
            record = {"step": step + 1,
                      **dpo_step(model, tokenizer, optimizer, pairs, rows, config, reference_logprobs)}
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            progress.set_postfix(loss=f"{record['loss']:.3f}", margin=f"{record['margin']:.2f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                checkpoint = run.checkpoint_folder(step + 1)
                save_checkpoint(checkpoint, model, optimizer, {"step": step + 1, "history": history, "rng": rng_state(),
                                                               "reference_logprobs": reference_logprobs})
                run.keep_only(checkpoint)
    run.finish({"steps": config.steps, "peak_memory_mb": memory.peak_mb})
    return DPOResult(model, output_dir, history, reused=False, resumed_from=start_step, peak_memory_mb=memory.peak_mb)


# --- what notebook 08 shows and records -------------------------------------------------------

def dpo_settings(config: DPOConfig, reasons: dict[str, str] | None = None) -> list[dict]:
    """The DPO settings a learner tunes, each with its value and the reason for it: rows for a table.

    `reasons` ({setting: reason}, a profile's) explain the values the profile chose; the other
    settings keep the course's value and reason. How a run computes and checkpoints is left out.
    """
    reasons = reasons or {}
    return [{"setting": item.name, "value": getattr(config, item.name),
             "why": reasons.get(item.name, item.metadata["why"])}
            for item in fields(config) if item.name not in ("autocast_dtype", "checkpoint_every")]


def dpo_record(comparison: dict, rouge_before: dict, rouge_after: dict, config: DPOConfig, result: DPOResult,
               **extra) -> dict:
    """The fields of a `dpo` record: toxicity before and after (`utils.stats.paired_difference`'s result),
    the greedy summaries' ROUGE before and after, the run's settings, time and memory, and `extra`."""
    return dict(
        toxicity_before_mean=comparison["before_mean"], toxicity_before_std=comparison["before_std"],
        toxicity_after_mean=comparison["after_mean"], toxicity_after_std=comparison["after_std"],
        toxicity_difference=comparison["difference"], ci_low=comparison["ci_low"], ci_high=comparison["ci_high"],
        ci_excludes_zero=comparison["excludes_zero"], test_dialogues=comparison["n"], seeds=comparison["samples"],
        rouge1_before=rouge_before["rouge1"], rouge1_after=rouge_after["rouge1"],
        rougeL_before=rouge_before["rougeL"], rougeL_after=rouge_after["rougeL"],
        dpo_steps=config.steps, batch_size=config.batch_size, learning_rate=config.learning_rate, beta=config.beta,
        seconds=result.train_seconds, peak_memory_mb=result.peak_memory_mb, **extra,
    )


def alignment_rows(records: list[dict], labels: dict[tuple[str, str], str]) -> dict[str, dict]:
    """The latest record of each (method, variant) in `labels`, as a row named by its label: toxicity
    before and after, the change with its interval, ROUGE-1's change, training time and peak memory."""
    latest = {(r["method"], r.get("variant", "")): r for r in records if (r["method"], r.get("variant", "")) in labels}
    return {labels[key]: {
        "toxicity before": r["toxicity_before_mean"], "toxicity after": r["toxicity_after_mean"],
        "change": r["toxicity_difference"], "95% CI low": r["ci_low"], "95% CI high": r["ci_high"],
        "ROUGE-1 change": r["rouge1_after"] - r["rouge1_before"],
        "training seconds": r.get("seconds"), "peak memory MB": r.get("peak_memory_mb"),
    } for key, r in sorted(latest.items(), key=lambda item: list(labels).index(item[0]))}
