"""Preference pairs built the way PPO learns: the summarizer's own samples, ranked by a toxicity scorer.

PPO (notebook 06) samples summaries from its policy and learns from the toxicity scorer's verdict
on each. To give DPO the same signal, every training prompt is sampled several times from the
model both start from, with PPO's sampling settings; the scorer ranks the samples, the least toxic
becomes the chosen response and the most toxic the rejected one. A prompt whose samples the
scorer rates alike (within `min_gap`) says nothing about toxicity and gives no pair.

Use::

    ranked = sample_and_rank(summarizer, tokenizer, prompts, ppo_config(profile), seeds, scorer.toxicity)
    ranked.pairs                                      # PreferencePairs for train_dpo
    ranked.chosen_toxicity, ranked.rejected_toxicity  # the scorer's verdict on each pair
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.detox import sample_summaries, score_table
from utils.dpo import PreferencePairs
from utils.ppo import PPOConfig


@dataclass
class RankedPairs:
    """One pair per prompt whose samples the scorer told apart, and what was left out."""

    pairs: PreferencePairs
    rows: list[int]  # the prompt each pair comes from
    chosen_toxicity: list[float]
    rejected_toxicity: list[float]
    skipped: int  # prompts whose samples were ties

    def table(self) -> list[dict]:
        """One row per pair (prompt index, both toxicities, both texts), for a DataFrame."""
        return [{"prompt": row, "chosen toxicity": low, "rejected toxicity": high, "chosen": chosen,
                 "rejected": rejected}
                for row, low, high, chosen, rejected in zip(self.rows, self.chosen_toxicity, self.rejected_toxicity,
                                                            self.pairs.chosen, self.pairs.rejected)]


def rank_into_pairs(prompts: Sequence[str], samples: Sequence[Sequence[str]], toxicity: np.ndarray,
                    min_gap: float) -> RankedPairs:
    """Per prompt, its least toxic sample chosen and its most toxic rejected.

    `samples[i]` are prompt i's samples and `toxicity[i]` their scores. A prompt whose scores differ
    by `min_gap` or less (identical samples, or samples the scorer rates alike) gives no pair: the
    scorer prefers neither, and a pair would teach DPO a preference it does not hold.
    """
    toxicity = np.asarray(toxicity, dtype=float)
    if toxicity.shape != (len(prompts), len(samples[0]) if samples else 0) or len(samples) != len(prompts):
        raise ValueError(f"One toxicity per sample: {toxicity.shape} scores for {len(prompts)} prompts.")
    rows, kept_prompts, chosen, rejected, low, high = [], [], [], [], [], []
    for i, (prompt, texts, scores) in enumerate(zip(prompts, samples, toxicity)):
        best, worst = int(np.argmin(scores)), int(np.argmax(scores))
        if scores[worst] - scores[best] <= min_gap or texts[best] == texts[worst]:
            continue
        rows.append(i)
        kept_prompts.append(prompt)
        chosen.append(texts[best])
        rejected.append(texts[worst])
        low.append(float(scores[best]))
        high.append(float(scores[worst]))
    if not rows:
        raise ValueError(f"The scorer told no prompt's samples apart by more than {min_gap}: no pairs. "
                         "Sample more per prompt, or at a higher temperature.")
    return RankedPairs(PreferencePairs(kept_prompts, chosen, rejected), rows, low, high, len(prompts) - len(rows))


def sample_and_rank(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    sampling: PPOConfig,
    seeds: Sequence[int],
    toxicity_fn: Callable[[list[str]], list[float]],
    batch_size: int = 8,
    min_gap: float = 0.0,
) -> RankedPairs:
    """Sample each prompt once per seed as PPO samples (`sampling`), score the samples, rank them into pairs.

    Sampling goes through `utils.detox.sample_summaries`, so under `course.start` a rerun reads the
    same samples back instead of generating them again.
    """
    if len(seeds) < 2:
        raise ValueError("A pair needs two samples per prompt: give at least two seeds.")
    samples = sample_summaries(model, tokenizer, prompts, sampling, seeds, batch_size, "samples for pairs")
    return rank_into_pairs(prompts, samples, score_table(toxicity_fn, samples), min_gap)


def pair_seeds(seed: int, samples: int) -> list[int]:
    """The sampling seeds of the pairs' samples, one per sample of a dialogue: apart from the evaluation's
    seeds (`utils.detox.evaluation_seeds`, which start at `seed`)."""
    return [seed + 1000 + i for i in range(samples)]
