"""Notebook 06's building blocks: the summarizer to align, its PPO settings, and toxicity measured over seeds.

- `fine_tuned_summarizer(profile)`: notebook 03's LoRA summarizer (its finished run reused,
  otherwise trained), with the adapter merged into the weights: a plain model again, ready
  for a fresh PPO adapter whose "switched off" state is exactly this summarizer.
- `ppo_config(profile)`: the profile's PPO settings as a `PPOConfig`; `dpo_config(profile)` those of DPO.
  Both compute under the profile's mixed precision, as its Trainer runs do.
- `detox_preferences(rows, tokenizer, profile)`: the dialogues as DPO pairs, the neutral summary
  chosen and the careless one rejected.
- `sample_summaries(...)`: several sampled summaries per prompt, one per seed, with the PPO
  sampling settings and PPO's sampling network, so before and after are measured on the
  distribution PPO trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.dpo import DPOConfig, PreferencePairs
from utils.generation import generate
from utils.models import autocast_dtype_name
from utils.ppo import PPOConfig, run_scaled_kl_horizon
from utils.profiles import Profile
from utils.training import TrainingRun


def fine_tuned_summarizer(profile: Profile) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, TrainingRun]:
    """Notebook 03's LoRA summarizer with its adapter merged: (model, tokenizer, the training run).

    The same data preparation, adapter and run name as notebook 03, so its finished run is
    reused when it exists (seconds); otherwise it trains here, exactly as there.
    """
    from utils.adapters import add_lora
    from utils.data import load_profile_data, tokenize_for_training
    from utils.models import load_model_and_tokenizer
    from utils.training import train

    model, tokenizer = load_model_and_tokenizer(profile)
    data = load_profile_data(profile)
    train_set = tokenize_for_training(data["train"], tokenizer, profile)
    validation_set = tokenize_for_training(data["validation"], tokenizer, profile)
    model = add_lora(model, rank=profile.lora_rank, dropout=profile.lora_dropout)
    run = train(model, tokenizer, profile, f"lora-r{profile.lora_rank}", train_set, validation_set,
                profile.peft_learning_rate)
    return model.merge_and_unload().eval(), tokenizer, run


def ppo_config(profile: Profile, **overrides) -> PPOConfig:
    """PPOConfig from the profile's ppo_* settings (sampling with top-k and top-p off), plus `overrides`."""
    config = PPOConfig(
        steps=profile.ppo_steps,
        batch_size=profile.ppo_batch_size,
        mini_batch_size=profile.ppo_mini_batch_size,
        ppo_epochs=profile.ppo_epochs,
        learning_rate=profile.ppo_learning_rate,
        max_new_tokens=profile.ppo_max_new_tokens,
        temperature=profile.ppo_temperature,
        target_kl=profile.ppo_target_kl,
        kl_horizon=run_scaled_kl_horizon(profile.ppo_steps, profile.ppo_batch_size),
        checkpoint_every=max(1, min(5, profile.ppo_steps)),
        autocast_dtype=autocast_dtype_name(profile),
        seed=profile.seed,
    )
    return replace(config, **overrides) if overrides else config


def dpo_config(profile: Profile, **overrides) -> DPOConfig:
    """DPOConfig from the profile's dpo_* settings (responses as long as the summaries it trains on), plus `overrides`."""
    config = DPOConfig(
        steps=profile.dpo_steps,
        batch_size=profile.dpo_batch_size,
        learning_rate=profile.dpo_learning_rate,
        beta=profile.dpo_beta,
        max_response_tokens=profile.max_target_tokens,
        checkpoint_every=max(1, min(5, profile.dpo_steps)),
        autocast_dtype=autocast_dtype_name(profile),
        seed=profile.seed,
    )
    return replace(config, **overrides) if overrides else config


def detox_preferences(rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, profile: Profile) -> PreferencePairs:
    """Detox rows as preference pairs: the summarizer's prompt, the neutral summary chosen, the careless one rejected."""
    from utils.data import prompts_for

    return PreferencePairs(prompts_for([row["dialogue"] for row in rows], tokenizer, profile),
                           [row["summary"] for row in rows], [row["careless_summary"] for row in rows])


def evaluation_seeds(profile: Profile) -> list[int]:
    """The sampling seeds of the before/after comparison: ppo_eval_seeds of them, from the profile's seed."""
    return [profile.seed + i for i in range(profile.ppo_eval_seeds)]


def sample_summaries(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: PPOConfig,
    seeds: Sequence[int],
    batch_size: int = 8,
    description: str = "Sampling",
) -> list[list[str]]:
    """One sampled summary per prompt and seed, as PPO samples them: rows are prompts, columns seeds.

    Each seed fixes the random numbers of a whole pass, so the same model gives the same
    texts again, and two models are compared on the same seeds. Under `config.autocast_dtype` the
    samples come from a merged copy in that dtype, as PPO's do (`utils.models.inference_copy`).
    """
    columns = []
    for seed in seeds:
        torch.manual_seed(seed)
        columns.append(generate(
            model, tokenizer, list(prompts), batch_size=batch_size, max_new_tokens=config.max_new_tokens,
            do_sample=True, top_k=config.top_k, top_p=config.top_p, temperature=config.temperature,
            precision=config.autocast_dtype, description=f"{description} (seed {seed})",
        ))
    return [list(row) for row in zip(*columns)]


def score_table(score_fn, samples: list[list[str]]) -> np.ndarray:
    """score_fn applied to every sample: an array (prompts, seeds) shaped like `samples`."""
    flat = [text for row in samples for text in row]
    scores = np.asarray(score_fn(flat), dtype=float)
    return scores.reshape(len(samples), -1)


def step_toxicity(toxicity_fn, history: list[dict]) -> list[tuple[int, float]]:
    """(step, mean toxicity of the responses that step sampled), from a PPO run's history."""
    return [(record["step"], float(np.mean(toxicity_fn(record["responses"])))) for record in history]


def plot_ppo_runs(runs: dict[str, dict[str, list[tuple[int, float]]]], titles: dict[str, str] | None = None):
    """One panel per logged quantity (e.g. reward, KL, toxicity), one line per run, against the PPO step.

    runs: {run name: {quantity: [(step, value), ...]}}; every run should log the same quantities.
    """
    import matplotlib.pyplot as plt

    quantities = list(next(iter(runs.values())))
    titles = titles or {}
    figure, axes = plt.subplots(1, len(quantities), figsize=(3.6 * len(quantities), 3.2))
    axes = [axes] if len(quantities) == 1 else list(axes)
    for ax, quantity in zip(axes, quantities):
        for name, series in runs.items():
            points = series.get(quantity) or []
            if points:
                ax.plot(*zip(*points), marker=".", label=name)
        ax.set_xlabel("PPO step")
        ax.set_title(titles.get(quantity, quantity), fontsize="medium")
    if len(runs) > 1:
        axes[0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_paired(before: np.ndarray, after: np.ndarray, label: str = "toxicity"):
    """Each item's mean score before (x) against after (y): points under the diagonal went down."""
    import matplotlib.pyplot as plt

    x, y = np.asarray(before).reshape(len(before), -1).mean(1), np.asarray(after).reshape(len(after), -1).mean(1)
    figure, axes = plt.subplots(figsize=(4.2, 4))
    top = max(float(x.max()), float(y.max()), 1e-3) * 1.05
    axes.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="no change")
    axes.scatter(x, y, s=18)
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_xlabel(f"{label} before (mean over seeds)")
    axes.set_ylabel(f"{label} after (mean over seeds)")
    axes.set_title(f"Each held-out dialogue: {label} before and after")
    axes.legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    return figure
