"""Plots the notebooks show: loss curves, prompt growth, sampling distributions, ROUGE bars."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch


def plot_losses(train: Sequence[tuple[int, float]], validation: Sequence[tuple[int, float]], title: str = "Loss"):
    """Train and validation loss against the optimizer step."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    if train:
        axes.plot(*zip(*train), marker=".", label="train")
    if validation:
        axes.plot(*zip(*validation), marker="o", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    return figure


def plot_prompt_lengths(shots: Sequence[int], lengths: Sequence[int], context_window: int):
    """Prompt length in tokens against the number of examples in the prompt, with the context window."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(shots, lengths, marker="o", label="prompt length")
    axes.axhline(context_window, color="red", linestyle="--", label=f"context window ({context_window})")
    axes.set_xlabel("examples in the prompt (shots)")
    axes.set_ylabel("tokens")
    axes.set_title("In-context examples make the prompt grow")
    axes.legend()
    figure.tight_layout()
    return figure


def plot_token_distributions(distributions: dict[str, torch.Tensor], tokenizer, top: int = 15):
    """One bar chart per sampling setting, over the `top` most likely tokens of the first setting."""
    first = next(iter(distributions.values()))
    ids = torch.topk(first, top).indices.tolist()
    labels = [repr(tokenizer.decode([i])) for i in ids]
    figure, axes = plt.subplots(1, len(distributions), figsize=(3.2 * len(distributions), 3.8), sharey=True)
    for ax, (name, probs) in zip(axes, distributions.items()):
        ax.bar(range(top), [float(probs[i]) for i in ids])
        ax.set_title(name, fontsize="small")
        ax.set_xticks(range(top), labels, rotation=90, fontsize="x-small")
    axes[0].set_ylabel("probability")
    figure.suptitle("Next-token distribution under each setting")
    figure.tight_layout()
    return figure


def plot_bars(values: dict[str, dict[str, float]], ylabel: str, title: str):
    """Grouped bars: one group per key of `values`, one bar per inner key (e.g. ROUGE type)."""
    groups = list(values)
    series = list(next(iter(values.values())))
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(5, 1.3 * len(groups)), 3.5))
    for offset, name in enumerate(series):
        xs = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(groups))]
        axes.bar(xs, [values[g][name] for g in groups], width, label=name)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize="small", ncol=len(series))
    figure.tight_layout()
    return figure


def plot_weights_and_levels(weights: torch.Tensor, levels: torch.Tensor, title: str):
    """Histogram of weights scaled by their largest magnitude, with the values a format can store."""
    scaled = (weights.detach().float() / weights.detach().float().abs().max()).flatten()
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.hist(scaled.numpy(), bins=120, color="tab:blue", alpha=0.7)
    for level in levels.tolist():
        axes.axvline(level, color="tab:red", linewidth=0.8)
    axes.set_xlabel("weight / largest |weight| (red: the 16 NF4 values)")
    axes.set_ylabel("count")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def running_mean(values: Sequence[float], window: int = 5) -> list[float]:
    """The mean of each value and the up to `window - 1` values before it (a trailing running mean)."""
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def plot_step_curves(runs: dict[str, dict[str, Sequence[tuple[int, float]]]], titles: dict[str, str] | None = None,
                     notes: dict[str, str] | None = None, window: int = 5):
    """One panel per logged quantity, one colour per run: each step's value as a dot, its running mean as a line.

    runs: {run name: {quantity: [(step, value), ...]}}; notes: {quantity: a short text under its panel}.
    A panel whose values cross zero gets a line at zero.
    """
    quantities = list(next(iter(runs.values())))
    titles, notes = titles or {}, notes or {}
    figure, axes = plt.subplots(1, len(quantities), figsize=(3.8 * len(quantities), 3.6), squeeze=False)
    for ax, quantity in zip(axes[0], quantities):
        for colour, (name, series) in enumerate(runs.items()):
            points = list(series.get(quantity) or [])
            if not points:
                continue
            steps, values = zip(*points)
            ax.plot(steps, values, ".", color=f"C{colour}", alpha=0.5)
            ax.plot(steps, running_mean(values, window), "-", color=f"C{colour}", label=name)
            if min(values) < 0 < max(values):
                ax.axhline(0, color="gray", linewidth=0.8, linestyle=":")
        ax.set_xlabel("PPO step")
        ax.set_title(titles.get(quantity, quantity), fontsize="medium")
        if quantity in notes:
            ax.text(0.0, -0.3, notes[quantity], transform=ax.transAxes, fontsize="x-small", va="top", wrap=True)
    axes[0][0].legend(fontsize="small", title=f"dots: each step; line: mean of {window}", title_fontsize="x-small")
    figure.tight_layout()
    return figure
