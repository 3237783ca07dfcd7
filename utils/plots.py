"""Plots the notebooks show: loss curves, prompt growth, sampling distributions, ROUGE bars."""

from __future__ import annotations

import textwrap
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
        note = "\n\n" + textwrap.fill(notes[quantity], 60) if quantity in notes else ""
        ax.set_xlabel("PPO step" + note, fontsize="medium" if not note else "small")
        ax.set_title(titles.get(quantity, quantity), fontsize="medium")
    axes[0][0].legend(fontsize="small", title=f"dots: each step; line: mean of {window}", title_fontsize="x-small")
    figure.tight_layout()
    return figure


# Notebook 05: what each method's training holds in memory, and what each method's quality cost.
MEMORY_PARTS = {"frozen_weights_mb": "frozen weights", "trainable_weights_mb": "trained weights",
                "gradients_mb": "gradients", "optimizer_states_mb": "optimizer states",
                "activations_and_rest_mb": "activations and the rest"}


def plot_memory_parts(rows: Sequence[dict], title: str = "Memory of a training step, by part"):
    """One stacked bar per measured method (rows of utils.apps.benchmark.measure_training_steps), in MB.

    The parts are MEMORY_PARTS; what the process held before loading the model is left out.
    """
    figure, axis = plt.subplots(figsize=(10, 1.4 + 0.6 * len(rows)))
    names = [row["label"] if "label" in row else row["method"] for row in rows]
    left = [0.0] * len(rows)
    for colour, (key, label) in enumerate(MEMORY_PARTS.items()):
        widths = [row.get(key, 0.0) for row in rows]
        axis.barh(names, widths, left=left, color=f"C{colour}", label=label)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in enumerate(left):
        axis.text(total, y, f" {total:,.0f}", va="center", fontsize="small")
    axis.invert_yaxis()
    axis.set_xlim(0, max(left) * 1.15)
    axis.set_xlabel("MB (the process's own start-up memory left out)")
    axis.set_title(title)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


def plot_quality_against_cost(rows: Sequence[dict], quality: str = "rouge1"):
    """`quality` of each method against its trainable parameters (log scale) and its training seconds.

    rows: one per method with `method`, `quality`, and `trainable_params` and/or `train_seconds`
    (utils.apps.report.method_comparison); a method that trained nothing (the base) is a dotted line.
    """
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in ((axes[0], "trainable_params", "trainable parameters (log scale)"),
                             (axes[1], "train_seconds", "training time (s)")):
        for colour, row in enumerate(rows):
            if row.get(quality) is None:
                continue
            if not row.get(key):  # nothing trained (the base model): a line to beat
                axis.axhline(row[quality], color="gray", linestyle=":", label=row["method"])
                axis.legend(fontsize="small", loc="lower right")
                continue
            axis.scatter(row[key], row[quality], color=f"C{colour}", s=60)
            axis.annotate(row["method"], (row[key], row[quality]), textcoords="offset points", xytext=(6, 4),
                          fontsize="small")
        axis.set_xlabel(label)
        axis.set_ylabel(f"{quality} (test split)")
        axis.grid(alpha=0.3)
        axis.margins(x=0.2, y=0.15)
    axes[0].set_xscale("log")
    axes[0].set_title("quality against what is trained")
    axes[1].set_title("quality against training time")
    figure.tight_layout()
    return figure


def plot_intervals(rows: dict[str, tuple[float, float, float]], xlabel: str, title: str):
    """A forest plot: one row per name, its estimate as a dot and its (low, high) interval as a line,
    against a dashed line at zero; red where the interval lies below zero, green above, grey across it."""
    names = list(rows)[::-1]  # the first row on top
    figure, axes = plt.subplots(figsize=(7, 0.55 * len(names) + 1.3))
    for y, name in enumerate(names):
        estimate, low, high = rows[name]
        colour = "tab:red" if high < 0 else "tab:green" if low > 0 else "tab:gray"
        axes.plot([low, high], [y, y], color=colour, linewidth=3, solid_capstyle="round")
        axes.plot(estimate, y, "o", color=colour, markersize=8)
    axes.axvline(0, color="black", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(names)), names)
    axes.set_ylim(-0.6, len(names) - 0.4)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def plot_stacked_bars(bars: dict[str, dict[str, float]], xlabel: str, title: str):
    """Horizontal bars, each the sum of its parts: one colour per part name, shared by every bar, with its value."""
    names = list(bars)[::-1]  # the first bar on top
    parts = list(dict.fromkeys(part for bar in bars.values() for part in bar))
    figure, axes = plt.subplots(figsize=(8, 0.8 * len(names) + 1.8))
    lefts = [0.0] * len(names)
    for colour, part in enumerate(parts):
        widths = [bars[name].get(part, 0.0) for name in names]
        drawn = axes.barh(range(len(names)), widths, left=lefts, color=f"C{colour}", label=part)
        axes.bar_label(drawn, labels=[f"{w:,.0f}" if w else "" for w in widths], label_type="center", fontsize="small")
        lefts = [left + width for left, width in zip(lefts, widths)]
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(len(parts), 4))
    figure.tight_layout()
    return figure


# Notebook 09: a GRPO run, step by step.
def plot_grpo_steps(history: Sequence[dict], components: Sequence[str], window: int = 3):
    """Four panels against the GRPO step: the mean of each reward component, the KL to the reference, the
    share of responses in groups whose rewards were all equal, and the loss. Dots: each step; lines: running mean."""
    steps = [record["step"] for record in history]
    panels = {"reward components (mean of the step)": list(components), "KL to the reference (per token)": ["kl"],
              "share in groups of equal rewards": ["zero_variance_share"], "loss": ["loss"]}
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 3.4))
    for ax, (title, keys) in zip(axes, panels.items()):
        for colour, key in enumerate(keys):
            values = [record[key] for record in history]
            ax.plot(steps, values, ".", color=f"C{colour}", alpha=0.5)
            ax.plot(steps, running_mean(values, window), "-", color=f"C{colour}", label=key)
            if min(values) < 0 < max(values):
                ax.axhline(0, color="gray", linewidth=0.8, linestyle=":")
        ax.set_xlabel("GRPO step")
        ax.set_title(title, fontsize="medium")
    axes[0].legend(fontsize="x-small", title=f"dots: each step; line: mean of {window}", title_fontsize="x-small")
    figure.tight_layout()
    return figure


def plot_dpo_loss(limit: float = 4.0):
    """DPO's loss -log sigmoid(margin) and a pair's weight in the gradient, sigmoid(-margin), against the margin."""
    margins = torch.linspace(-limit, limit, 161)
    figure, axes = plt.subplots(figsize=(6, 3.4))
    axes.plot(margins, -torch.nn.functional.logsigmoid(margins), label="loss = -log sigmoid(margin)")
    axes.plot(margins, torch.sigmoid(-margins), linestyle="--", label="gradient weight = sigmoid(-margin)")
    axes.axvline(0, color="gray", linestyle=":", linewidth=0.8)
    axes.set_xlabel("margin = beta x (chosen log-ratio - rejected log-ratio)")
    axes.set_title("Ranked wrong (left) and ranked right (right)", fontsize="medium")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_dpo_history(runs: dict[str, list[dict]]):
    """DPO runs step by step: the loss, the implicit rewards (chosen solid, rejected dashed) and the share of
    pairs ranked right. runs: {run name: its history, one record per step}."""
    figure, (loss_axes, reward_axes, right_axes) = plt.subplots(1, 3, figsize=(12, 3.4))
    for colour, (name, history) in enumerate(runs.items()):
        steps = [record["step"] for record in history]
        loss_axes.plot(steps, [r["loss"] for r in history], marker=".", color=f"C{colour}", label=name)
        reward_axes.plot(steps, [r["chosen_reward"] for r in history], marker=".", color=f"C{colour}",
                         label=f"{name}: chosen")
        reward_axes.plot(steps, [r["rejected_reward"] for r in history], marker=".", linestyle="--",
                         color=f"C{colour}", label=f"{name}: rejected")
        right_axes.plot(steps, [r["accuracy"] for r in history], marker=".", color=f"C{colour}", label=name)
    reward_axes.axhline(0, color="gray", linestyle=":", linewidth=0.8)
    loss_axes.set(xlabel="DPO step", title="loss (log 2 at the start)")
    reward_axes.set(xlabel="DPO step", title="implicit rewards: beta x log(pi / pi_ref)")
    right_axes.set(xlabel="DPO step", title="share of the step's pairs ranked right", ylim=(-0.05, 1.05))
    reward_axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
