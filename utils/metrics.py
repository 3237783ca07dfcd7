"""ROUGE (rouge-score), BLEU (sacrebleu) and perplexity. No metric is written by hand here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from utils.families import answer_loss

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

References = str | Sequence[str]


def _as_lists(references: Sequence[References]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


OVER_REFERENCES = ("best", "mean")
MEAN_SUFFIX = "_mean_ref"  # rouge1_mean_ref...: the mean over references, next to the best-reference score


def rouge(predictions: Sequence[str], references: Sequence[References], over: str = "best") -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 with stemming, as the Hugging Face `rouge` metric reports them.

    A reference may be a list of several references (DialogSum's test set has three per
    dialogue). `over="best"`: each prediction scores against its best-matching one (rouge-score's
    `score_multi`). `over="mean"`: the mean of its scores against each one, which equals the mean
    over rows of one reference each, as the original lab scored the Hub copy's 1,500 test rows.
    """
    if over not in OVER_REFERENCES:
        raise ValueError(f"over must be one of {OVER_REFERENCES}, got {over!r}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("rouge() needs at least one prediction")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = {name: 0.0 for name in ROUGE_TYPES}
    for prediction, refs in zip(predictions, _as_lists(references)):
        if over == "best":
            scores = {name: s.fmeasure for name, s in scorer.score_multi(refs, prediction).items()}
        else:
            each = [scorer.score(reference, prediction) for reference in refs]
            scores = {name: sum(s[name].fmeasure for s in each) / len(each) for name in ROUGE_TYPES}
        for name in ROUGE_TYPES:
            totals[name] += scores[name]
    return {name: totals[name] / len(predictions) for name in ROUGE_TYPES}


def rouge_best_and_mean(predictions: Sequence[str], references: Sequence[References]) -> dict[str, float]:
    """Both ways of scoring several references: rouge1... (best one) and rouge1_mean_ref... (their mean)."""
    mean = rouge(predictions, references, over="mean")
    return {**rouge(predictions, references), **{name + MEAN_SUFFIX: value for name, value in mean.items()}}


def rouge_per_example(predictions: Sequence[str], references: Sequence[References]) -> list[dict[str, float]]:
    """ROUGE F1 of each prediction, for tables of individual examples."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [
        {name: score.fmeasure for name, score in scorer.score_multi(refs, prediction).items()}
        for prediction, refs in zip(predictions, _as_lists(references))
    ]


def rouge_details(prediction: str, reference: str) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 of each ROUGE type for one pair (for worked examples)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return {
        name: {"precision": s.precision, "recall": s.recall, "f1": s.fmeasure}
        for name, s in scorer.score(reference, prediction).items()
    }


def bleu(predictions: Sequence[str], references: Sequence[References]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) with any number of references per prediction."""
    refs = _as_lists(references)
    width = max(len(r) for r in refs)
    # sacrebleu wants one stream per reference position; pad short lists with their first reference.
    streams = [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]
    return BLEU().corpus_score(list(predictions), streams).score


def perplexity(model, batches) -> float:
    """exp(mean loss per target token) over `batches` of input_ids / attention_mask / labels."""
    total_loss, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(model.device) for k, v in batch.items()}
            tokens = int((batch["labels"] != -100).sum())
            total_loss += float(answer_loss(model, batch)) * tokens
            total_tokens += tokens
    model.train(was_training)
    return math.exp(total_loss / max(total_tokens, 1))
