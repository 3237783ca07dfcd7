"""Is a change real or noise? A paired comparison of a score before and after training.

Notebook 06 samples several summaries (one per seed) of each held-out dialogue before and
after PPO and scores their toxicity. The samples of one dialogue are not independent of
each other (the same dialogue provokes the same words), so the unit of the comparison is
the dialogue: average each dialogue's scores over the seeds, take the difference
after - before per dialogue, and give the mean difference a t-based confidence interval:

    d_i      = mean_seeds(after_i) - mean_seeds(before_i)        for dialogues i = 1..n
    interval = mean(d) +- t_{(1 + confidence) / 2, n - 1} * std(d) / sqrt(n)

If the interval excludes zero, a difference that large is unlikely to be noise at this
sample size; if it includes zero, the data cannot tell the change from noise.

A single accuracy (right answers out of n benchmark items, utils.benchmarks) gets the Wilson
score interval of a proportion: `proportion_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_matrix(scores: Sequence[float] | Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    """(items, samples) float array: one row per item (dialogue), one column per sample (seed)."""
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must be one score per item, or one row of scores per item; got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} holds NaN or infinite scores.")
    return matrix


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The Student t quantile: P(T <= value) = probability, for T with `degrees_of_freedom`."""
    from scipy.stats import t

    return float(t.ppf(probability, degrees_of_freedom))


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion successes / n (an accuracy over n items).

        z      = the normal quantile at (1 + confidence) / 2,     p = successes / n
        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    Unlike p +- z sqrt(p (1 - p) / n) it stays inside [0, 1], and it does not shrink to a point
    when every item is right or every item wrong: 10 right out of 10 is not proof of perfection.
    """
    if n < 1:
        raise ValueError("A proportion needs at least 1 item.")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}.")
    from scipy.stats import norm

    z = float(norm.ppf((1.0 + confidence) / 2.0))
    p = successes / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(
    before: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    after: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    confidence: float = 0.95,
) -> dict[str, float | int | bool]:
    """Compare scores of the same items before and after, with a confidence interval of the mean change.

    `before` and `after`: one score per item, or a row of scores per item (one per seed), the
    rows in the same item order. Returns a dict with
    - n (items), samples (scores per item in each of before/after);
    - before_mean, before_std, after_mean, after_std: over every score (item x sample), std with n - 1;
    - difference: mean over items of (after - before), the items' scores first averaged over samples;
    - difference_std: the standard deviation of those per-item differences;
    - ci_low, ci_high: the t-based interval of `difference` at `confidence`;
    - confidence, and excludes_zero: True when the interval lies entirely above or below zero.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}.")
    before_matrix, after_matrix = _as_matrix(before, "before"), _as_matrix(after, "after")
    if before_matrix.shape[0] != after_matrix.shape[0]:
        raise ValueError(f"before has {before_matrix.shape[0]} items and after {after_matrix.shape[0]}: "
                         "pair each item's scores.")
    n = before_matrix.shape[0]
    if n < 2:
        raise ValueError("A confidence interval needs at least 2 items.")
    differences = after_matrix.mean(axis=1) - before_matrix.mean(axis=1)
    mean = float(differences.mean())
    spread = float(differences.std(ddof=1))
    half_width = t_quantile((1.0 + confidence) / 2.0, n - 1) * spread / math.sqrt(n)
    low, high = mean - half_width, mean + half_width
    return {
        "n": n,
        "samples": int(before_matrix.shape[1]),
        "before_mean": float(before_matrix.mean()),
        "before_std": float(before_matrix.std(ddof=1)) if before_matrix.size > 1 else 0.0,
        "after_mean": float(after_matrix.mean()),
        "after_std": float(after_matrix.std(ddof=1)) if after_matrix.size > 1 else 0.0,
        "difference": mean,
        "difference_std": spread,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "excludes_zero": bool(low > 0.0 or high < 0.0),
    }


def verdict(result: dict, quantity: str = "toxicity") -> str:
    """A plain-words reading of `paired_difference`'s result: is the change real at this sample size?"""
    level = f"{100 * result['confidence']:.0f}%"
    change = "drop" if result["difference"] < 0 else "rise"
    interval = f"[{result['ci_low']:+.4f}, {result['ci_high']:+.4f}]"
    where = f"over {result['n']} dialogues x {result['samples']} samples"
    if result["excludes_zero"]:
        real_change = "drop" if result["ci_high"] < 0 else "rise"
        return (f"Mean {quantity} changed by {result['difference']:+.4f} {where}; the {level} interval {interval} "
                f"excludes zero: the {real_change} is real at this sample size, not noise.")
    return (f"Mean {quantity} changed by {result['difference']:+.4f} {where}; the {level} interval {interval} "
            f"includes zero: this {change} cannot be told apart from noise at this sample size.")
