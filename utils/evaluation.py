"""Summarize a split and score it: the evaluation every notebook runs."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.data import batches, prompts_for, tokenize_for_training
from utils.generation import generate
from utils.metrics import bleu, perplexity, rouge_best_and_mean, rouge_per_example
from utils.models import autocast_dtype_name, count_parameters, inference_copy
from utils.plumbing.out_of_memory import explained_out_of_memory
from utils.profiles import Profile, memory_sizes
from utils.prompts import DEFAULT_TEMPLATE


def summarize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    profile: Profile,
    dialogues: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    description: str = "Summarizing",
    **generation_kwargs,
) -> list[str]:
    """One generated summary per dialogue (greedy unless told otherwise).

    Generated in the precision the profile trains in (`precision="bfloat16"` where it trains under
    bf16 autocast, see utils.generation.generate_ids); `precision=None` generates in the model's own.
    """
    prompts = prompts_for(list(dialogues), tokenizer, profile, template)
    generation_kwargs.setdefault("max_new_tokens", profile.max_new_tokens)
    generation_kwargs.setdefault("precision", autocast_dtype_name(profile))
    return generate(model, tokenizer, prompts, batch_size=profile.eval_batch_size, description=description,
                    **generation_kwargs)


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    profile: Profile,
    dataset: Dataset,
    template: str = DEFAULT_TEMPLATE,
    description: str = "Evaluating",
) -> tuple[list[str], dict[str, float]]:
    """Summaries of `dataset` and their ROUGE: against the best reference, and the mean over references."""
    predictions = summarize(model, tokenizer, profile, dataset["dialogue"], template, description)
    return predictions, rouge_best_and_mean(predictions, list(dataset["references"]))


def side_by_side(dataset: Dataset, columns: dict[str, list[str]], rows: int = 3) -> pd.DataFrame:
    """A table of the first `rows` dialogues: reference and each model's summary with its ROUGE-1."""
    references = list(dataset["references"])[:rows]
    table = {"reference": [r[0] for r in references]}
    for name, predictions in columns.items():
        scores = rouge_per_example(predictions[:rows], references)
        table[name] = [f"{p}  [R1 {s['rouge1']:.2f}]" for p, s in zip(predictions[:rows], scores)]
    frame = pd.DataFrame(table, index=list(dataset["id"])[:rows])
    return frame.style.set_properties(**{"text-align": "left", "white-space": "pre-wrap"})


def split_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, profile: Profile,
                     dataset: Dataset) -> float:
    """Perplexity of the reference summaries of `dataset` given their prompts.

    Computed in the precision the profile trains in, as `summarize` generates: from the model's bf16
    copy where it trains under bf16 autocast (utils.models.inference_copy), else from the model itself.
    """
    scored = inference_copy(model, autocast_dtype_name(profile))
    tokenized = tokenize_for_training(dataset, tokenizer, profile)
    with explained_out_of_memory("scoring perplexity", memory_sizes(profile)):
        return perplexity(scored, batches(tokenized, tokenizer, scored, profile.eval_batch_size))


def scores_record(outputs: list[str], scores: dict[str, float], dataset: Dataset, test_perplexity: float) -> dict:
    """What a model's summaries of `dataset` record: their ROUGE (`scores`), BLEU, the test perplexity, the count."""
    return {**scores, "bleu": bleu(outputs, list(dataset["references"])), "perplexity": test_perplexity,
            "test_examples": len(dataset)}


def training_record(training_run, model: PreTrainedModel) -> dict:
    """What a training run (utils.training.TrainingRun) of `model` records: parameters trained and in all,
    seconds, tokens per second, peak memory and the saved weights' size in bytes."""
    trainable, total = count_parameters(model)
    saved = sum(f.stat().st_size for f in (training_run.output_dir / "final").glob("*.safetensors"))
    return {"trainable_params": trainable, "total_params": total, "train_seconds": training_run.train_seconds,
            "tokens_per_second": training_run.tokens_per_second, "peak_memory_mb": training_run.peak_memory_mb,
            "saved_bytes": saved}
