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
from utils.ppo import PPOConfig, PPOResult, run_scaled_kl_horizon, settings_with_reasons
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


def ppo_settings(profile: Profile, config: PPOConfig) -> list[dict]:
    """The PPO settings a learner tunes, each with its value and the reason for it (the profile's, for the
    values the profile sets): rows for a table. How a run computes and checkpoints is left out."""
    rows = settings_with_reasons(config, profile.ppo_reasons)
    return [row for row in rows if row["setting"] not in ("autocast_dtype", "checkpoint_every")]


def ppo_record(comparison: dict, quality, config: PPOConfig, result: PPOResult, reward: str) -> dict:
    """The fields of notebook 06's `ppo` record: toxicity before and after (`paired_difference`'s result),
    the greedy summaries' ROUGE and toxicity (`quality`: rows "before PPO" and "after PPO"), the run's settings."""
    return dict(
        toxicity_before_mean=comparison["before_mean"], toxicity_before_std=comparison["before_std"],
        toxicity_after_mean=comparison["after_mean"], toxicity_after_std=comparison["after_std"],
        toxicity_difference=comparison["difference"], ci_low=comparison["ci_low"], ci_high=comparison["ci_high"],
        ci_excludes_zero=comparison["excludes_zero"], test_dialogues=comparison["n"], seeds=comparison["samples"],
        greedy_toxicity_before=float(quality.loc["before PPO", "toxicity"]),
        greedy_toxicity_after=float(quality.loc["after PPO", "toxicity"]),
        rouge1_before=float(quality.loc["before PPO", "rouge1"]),
        rouge1_after=float(quality.loc["after PPO", "rouge1"]),
        rougeL_before=float(quality.loc["before PPO", "rougeL"]),
        rougeL_after=float(quality.loc["after PPO", "rougeL"]),
        ppo_steps=config.steps, batch_size=config.batch_size, learning_rate=config.learning_rate,
        temperature=config.temperature, reward=reward, seconds=sum(record["seconds"] for record in result.history),
        peak_memory_mb=result.peak_memory_mb,
    )


def hacking_record(
    result: PPOResult, config: PPOConfig, toxicity: list[tuple[int, float]], rouge1_probe: float
) -> dict:
    """The fields of notebook 06's `ppo` record for the run without the KL penalty: its settings, and the reward,
    KL and toxicity (`step_toxicity`) of its last step's samples, and the ROUGE-1 of a few greedy summaries."""
    return dict(
        ppo_steps=config.steps, learning_rate=config.learning_rate, kl_coef=config.init_kl_coef,
        reward_last=result.history[-1]["reward_mean"], kl_last=result.history[-1]["kl"],
        toxicity_last=toxicity[-1][1], rouge1_probe=rouge1_probe,
        seconds=sum(record["seconds"] for record in result.history),
    )


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


KL_NOTE = ("Each point: log pi/pi_ref summed over a response's sampled tokens, averaged over the step's responses. "
           "It estimates the KL without bias, and the KL is never negative, but a finite sample can fall below zero.")


def plot_ppo_runs(runs: dict[str, dict[str, list[tuple[int, float]]]], titles: dict[str, str] | None = None):
    """One panel per logged quantity (e.g. reward, KL, toxicity), one colour per run, against the PPO step:
    each step as a dot, a running mean as a line; a "KL" panel says why its points can fall below zero.

    runs: {run name: {quantity: [(step, value), ...]}}; every run should log the same quantities.
    """
    from utils.plots import plot_step_curves

    return plot_step_curves(runs, titles, notes={"KL": KL_NOTE})


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
