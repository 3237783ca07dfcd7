"""Catastrophic forgetting, measured, and its remedy of multi-task fine-tuning.

The second task is answering general questions in a few words: a format unlike a summary. The
probe asks the benchmark's questions (data/benchmark/everyday_mc.jsonl) without their choices and
lets the model write; an answer counts as right when it names the gold choice and none of the
three wrong ones. The model's own words are judged, not the likelihood of given answers, so a model
that now writes summaries after every prompt scores low, whatever it still "knows".

Multi-task fine-tuning mixes examples of the second task (data/everyday_qa/train.jsonl: other
questions, with short answers) into the summaries, so training keeps rewarding that behaviour:

    before = short_answer_probe(model, tokenizer, profile)
    ... train ...
    after = short_answer_probe(model, tokenizer, profile)
    print(compare_probes(before, after).summary())
    mixed = multitask_mix(summaries, second_task_training_set(tokenizer, profile), share=0.25)
    run.record("full", **forgetting_record(change, perplexity_before, perplexity_after, profile, "full"))

`train_for_forgetting` trains a fresh base model for the profile's forgetting settings by one of
the three methods compared (full, multitask, LoRA); notebooks 02 and 03 and bench/forgetting.py
share its trainings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.adapters import add_lora
from utils.benchmarks import BENCHMARK_DIR, BenchmarkComparison, compare_correctness
from utils.data import read_rows, tokenize_pairs
from utils.generation import generate
from utils.models import autocast_dtype_name, load_model_and_tokenizer
from utils.plumbing.files import DATA_DIR
from utils.profiles import Profile
from utils.prompts import model_input
from utils.training import TrainingRun, train

PROBE_FILE = BENCHMARK_DIR / "everyday_mc.jsonl"
SECOND_TASK_TRAIN = DATA_DIR / "everyday_qa" / "train.jsonl"
INSTRUCTION = "Answer in a few words."
FORGETTING_METHODS = ("full", "multitask", "lora")
MULTITASK_SHARE = 0.25  # a quarter of the examples from the second task: enough to keep it, most still summaries
ANSWER_TOKENS = 16  # a few words: longer answers are not needed to name the gold choice


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def names(answer: str, choice: str) -> bool:
    """Whether `answer` contains `choice` as whole words (case and punctuation ignored)."""
    return _words(choice) in _words(answer)


def judge(answer: str, choices: list[str], gold: int) -> bool:
    """Right when the answer names the gold choice and no wrong one."""
    named = [names(answer, choice) for choice in choices]
    return named[gold] and sum(named) == 1


def in_words(answer: str) -> bool:
    """Whether an answer is written in words: one of two letters or more, and letters or spaces in most
    of its characters ("#222222" and "!!!!" are not; a wrong answer or a summary can be)."""
    text = answer.strip()
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return bool(re.search(r"[^\W\d_]{2,}", text)) and letters >= 0.7 * len(text)


def word_share(answers: list[str]) -> float:
    """The share of `answers` written in words (`in_words`): what is left of them when a model collapses."""
    return sum(in_words(answer) for answer in answers) / max(len(answers), 1)


def question_prompt(tokenizer: PreTrainedTokenizerBase, profile: Profile, question: str) -> str:
    """A question as the model reads it: the question and the instruction, as a chat turn where there is one."""
    return model_input(tokenizer, f"{question} {INSTRUCTION}", profile.is_encoder_decoder)


@dataclass(frozen=True)
class ProbeResult:
    """The model's answers to the probe's questions and whether each is right."""

    ids: list[str]
    questions: list[str]
    answers: list[str]
    right: list[bool]

    @property
    def accuracy(self) -> float:
        return sum(self.right) / len(self.right)

    def summary(self) -> str:
        return f"short answers: {sum(self.right)} of {len(self.right)} right ({self.accuracy:.3f})"


def short_answer_probe(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, profile: Profile, limit: int | None = None
) -> ProbeResult:
    """Greedy short answers to the benchmark's questions (without their choices), each judged right or wrong.

    Generated in the profile's training precision, as `utils.evaluation.summarize` does."""
    rows = read_rows(PROBE_FILE)[:limit]
    prompts = [question_prompt(tokenizer, profile, row["question"]) for row in rows]
    answers = generate(model, tokenizer, prompts, batch_size=profile.eval_batch_size, max_new_tokens=ANSWER_TOKENS,
                       precision=autocast_dtype_name(profile), progress=False)
    return ProbeResult([row["id"] for row in rows], [row["question"] for row in rows], answers,
                       [judge(answer, row["choices"], row["answer"]) for answer, row in zip(answers, rows)])


def compare_probes(before: ProbeResult, after: ProbeResult, confidence: float = 0.95) -> BenchmarkComparison:
    """Accuracy after - before on the same questions, with a paired interval (+1 fixed, -1 broken, 0 unchanged)."""
    if before.ids != after.ids:
        raise ValueError("before and after must answer the same questions in the same order.")
    return compare_correctness(before.right, after.right, "short-answer accuracy", confidence)


def forgetting_record(change: BenchmarkComparison, perplexity_before: float, perplexity_after: float,
                      profile: Profile, method: str = "full") -> dict:
    """What a forgetting run of `method` records (`run.record(method, **forgetting_record(...))`): the second
    task's accuracy before and after with the paired interval of the change, the summaries' test perplexity
    before and after (`perplexity` is the one after, as other records keep it), and the profile's passes and
    rate for the method (and the second task's share for multitask)."""
    if method not in FORGETTING_METHODS:
        raise ValueError(f"method must be one of {FORGETTING_METHODS}, not {method!r}")
    rate = profile.forgetting_lora_learning_rate if method == "lora" else profile.forgetting_learning_rate
    return {"variant": "forgetting", "second_task_before": change.before, "second_task_after": change.after,
            "second_task_ci_low": change.ci_low, "second_task_ci_high": change.ci_high,
            "perplexity_before": perplexity_before, "perplexity_after": perplexity_after,
            "perplexity": perplexity_after, "epochs": profile.forgetting_epochs, "learning_rate": rate,
            **({"second_task_share": MULTITASK_SHARE} if method == "multitask" else {})}


WORDS_NEEDED = 0.9  # of the answers, for a run to count as writing words rather than collapsed


def forgetting_checks(pushed: BenchmarkComparison, multitask: BenchmarkComparison, perplexity_before: float,
                      pushed_perplexity: float, pushed_answers: list[str]) -> dict[str, bool]:
    """Which parts of the forgetting story held in a run, each True or False: the pushed run is still a
    summarizer that writes words, it forgot (interval below zero), and multi-task training recovered
    (interval including zero, its accuracy at least halfway back from the pushed run's to the base model's)."""
    halfway = pushed.after + (pushed.before - pushed.after) / 2
    return {
        "the pushed run still summarizes: test perplexity no worse than the base model's":
            pushed_perplexity <= perplexity_before,
        f"the pushed run writes words: at least {WORDS_NEEDED:.0%} of its answers": word_share(pushed_answers) >= WORDS_NEEDED,
        "the pushed run forgot: its interval lies below zero": pushed.ci_high < 0,
        "multi-task recovered: its interval includes zero": multitask.ci_low <= 0 <= multitask.ci_high,
        "multi-task recovered: at least halfway back from the pushed run to the base model": multitask.after >= halfway,
    }


def second_task_training_set(tokenizer: PreTrainedTokenizerBase, profile: Profile) -> Dataset:
    """The second task's training examples (other questions than the probe's), tokenized like the summaries."""
    rows = read_rows(SECOND_TASK_TRAIN)
    prompts = [question_prompt(tokenizer, profile, row["question"]) for row in rows]
    return tokenize_pairs(prompts, [row["answer"] for row in rows], tokenizer, profile)


def multitask_mix(first: Dataset, second: Dataset, share: float, seed: int = 0) -> Dataset:
    """`first` with second-task examples added so they make up `share` of the result, shuffled together."""
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1 (exclusive), not {share}")
    wanted = round(len(first) * share / (1 - share))
    if wanted > len(second):
        raise ValueError(f"a share of {share} needs {wanted} second-task examples; there are {len(second)}")
    columns = ["input_ids", "attention_mask", "labels"]
    added = second.shuffle(seed=seed).select(range(wanted)).select_columns(columns)
    return concatenate_datasets([first.select_columns(columns), added]).shuffle(seed=seed)


def forgetting_settings(profile: Profile) -> str:
    """The forgetting runs' data, passes and batch size, in words (their learning rates are printed apart)."""
    summaries = ("all the" if profile.forgetting_train_examples is None
                 else f"the first {profile.forgetting_train_examples}")
    return f"{profile.forgetting_epochs:g} passes over {summaries} summaries at batch {profile.forgetting_batch_size}"


def train_for_forgetting(
    method: str, tokenizer: PreTrainedTokenizerBase, profile: Profile, summaries: Dataset, validation: Dataset,
    epochs: float | None = None, learning_rate: float | None = None, share: float = MULTITASK_SHARE,
    lora_learning_rate: float | None = None,
) -> TrainingRun:
    """Train a fresh base model on the summaries by `method` ("full", "multitask" or "lora").

    The first `forgetting_train_examples` summaries (all where the profile says so), `epochs`
    (default: the profile's `forgetting_epochs`) passes over them at `forgetting_batch_size`; full
    and multitask at `learning_rate` (default: `forgetting_learning_rate`), LoRA at
    `lora_learning_rate` (default: `forgetting_lora_learning_rate`). Multitask adds second-task
    examples to make up `share` of the data and trains for as many optimizer steps as full. Settings
    equal to the main runs' (notebooks 02 and 03) reuse them; the others measure no validation loss
    during training (the notebooks compare short answers and test perplexity, not loss curves), so
    `validation` only serves the main runs.
    """
    if method not in FORGETTING_METHODS:
        raise ValueError(f"method must be one of {FORGETTING_METHODS}, not {method!r}")
    epochs = profile.forgetting_epochs if epochs is None else epochs
    learning_rate = profile.forgetting_learning_rate if learning_rate is None else learning_rate
    main_data = profile.forgetting_train_examples is None and profile.forgetting_batch_size == profile.batch_size
    if profile.forgetting_train_examples is not None:
        summaries = summaries.select(range(min(profile.forgetting_train_examples, len(summaries))))
    profile = replace(profile, batch_size=profile.forgetting_batch_size)
    model, _ = load_model_and_tokenizer(profile)
    settings = f"e{epochs:g}-lr{learning_rate:g}"
    if method == "lora":
        rank, rate = profile.lora_rank, lora_learning_rate or profile.forgetting_lora_learning_rate
        name = f"forgetting-lora-r{rank}-e{epochs:g}" + ("" if rate == profile.peft_learning_rate else f"-lr{rate:g}")
        main_run = main_data and (epochs, rate) == (profile.epochs, profile.peft_learning_rate)
        if main_run:
            name = f"lora-r{rank}"  # notebook 03's main adapter
        adapted = add_lora(model, rank=rank, dropout=profile.lora_dropout)
        return train(adapted, tokenizer, profile, name, summaries, validation if main_run else None, rate, epochs=epochs)
    if method == "multitask":
        mixed = multitask_mix(summaries, second_task_training_set(tokenizer, profile), share)
        return train(model, tokenizer, profile, f"forgetting-multitask-{settings}-share{share:g}", mixed, None,
                     learning_rate, epochs=epochs * len(summaries) / len(mixed))
    main_run = main_data and (epochs, learning_rate) == (profile.epochs, profile.full_learning_rate)
    return train(model, tokenizer, profile, "full" if main_run else f"forgetting-full-{settings}", summaries,
                 validation if main_run else None, learning_rate, epochs=epochs)
