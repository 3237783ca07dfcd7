"""Benchmarks with the field's harness: the course's multiple-choice questions, scored by lm-evaluation-harness.

A benchmark in the style of ARC or MMLU (data/benchmark/, written for the course): a question,
four choices, one gold answer. The model writes nothing; each choice's text is scored as the
answer that would follow the question:

    loglikelihood(choice) = sum over the choice's tokens t of log p(t | question, the choice's tokens before t)
    acc       the choice with the highest log-likelihood is the gold one
    acc_norm  the same with each log-likelihood divided by the choice's length in characters

No generation, no parsing of free text, and every model scored the same way: this is how
published numbers (model cards, leaderboards) are computed. EleutherAI's lm-evaluation-harness
(`lm_eval`) does the scoring from a task YAML (data/benchmark/everyday_mc.yaml); this module hands
it the model objects a notebook holds (the base model, a fully fine-tuned one, a PEFT model),
keeps the harness's per-item log, and compares two models on the same items:

    result = run_benchmark(model, tokenizer, profile)
    print(result.summary())
    print(describe_item(result.items[0]))          # each choice's log-likelihood, and which one wins
    print(compare_results(before, after).summary())  # accuracy after - before, with a paired interval
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from lm_eval import simple_evaluate
from lm_eval.api.task import Task
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import PreTrainedTokenizerBase

from utils.families import uses_chat_template
from utils.models import autocast_dtype_name, inference_copy
from utils.plumbing.files import DATA_DIR, PROJECT_ROOT
from utils.plumbing.out_of_memory import explained_out_of_memory
from utils.profiles import Profile, memory_sizes
from utils.stats import paired_difference, proportion_interval

BENCHMARK_DIR = DATA_DIR / "benchmark"
TASK_NAME = "everyday_mc"
METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class ItemScores:
    """One question as the harness scored it: every choice's log-likelihood given the question."""

    index: int  # position in the benchmark file
    id: str
    question: str
    choices: list[str]
    gold: int  # index of the right choice
    loglikelihoods: list[float]  # log p(continuation | prompt), one per choice
    prompt: str  # the text the model read before each choice: the question, in the chat template or not
    continuations: list[str]  # the texts scored after it: each choice, with whitespace before it if any

    @property
    def predicted(self) -> int:
        """The choice with the highest log-likelihood: the model's answer for `acc`."""
        return max(range(len(self.choices)), key=lambda i: self.loglikelihoods[i])

    @property
    def predicted_norm(self) -> int:
        """The choice with the highest log-likelihood per character: the model's answer for `acc_norm`."""
        return max(range(len(self.choices)), key=lambda i: self.loglikelihoods[i] / len(self.choices[i]))

    @property
    def correct(self) -> bool:
        return self.predicted == self.gold

    @property
    def correct_norm(self) -> bool:
        return self.predicted_norm == self.gold


@dataclass(frozen=True)
class BenchmarkResult:
    """Accuracies of one model on the benchmark (as the harness computed them), with intervals and every item."""

    task: str
    n: int  # items scored
    acc: float
    acc_norm: float
    acc_interval: tuple[float, float]  # Wilson interval at `confidence`
    acc_norm_interval: tuple[float, float]
    confidence: float
    chat_template: bool  # whether each question was a user turn of the model's chat template
    seconds: float
    items: list[ItemScores]

    def correctness(self, metric: str = "acc") -> list[bool]:
        """Per item (in file order): did the model pick the gold choice under `metric` ("acc" or "acc_norm")?"""
        _check_metric(metric)
        return [item.correct if metric == "acc" else item.correct_norm for item in self.items]

    @property
    def chance(self) -> float:
        """The accuracy of guessing at random: the mean of 1 / (number of choices) over the items."""
        return sum(1 / len(item.choices) for item in self.items) / self.n

    def summary(self) -> str:
        level = f"{100 * self.confidence:.0f}%"
        low, high = self.acc_interval
        low_norm, high_norm = self.acc_norm_interval
        return (f"{self.task}: acc {self.acc:.3f} ({level} interval [{low:.3f}, {high:.3f}]), "
                f"acc_norm {self.acc_norm:.3f} ([{low_norm:.3f}, {high_norm:.3f}]) over {self.n} items, "
                f"chance {self.chance:.2f}; {self.seconds:.1f} s")


@dataclass(frozen=True)
class BenchmarkComparison:
    """Two models on the same items: accuracy after - before, with a paired interval."""

    metric: str
    n: int
    before: float
    after: float
    difference: float  # after - before
    ci_low: float
    ci_high: float
    confidence: float
    fixed: int  # items wrong before and right after
    broken: int  # items right before and wrong after

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def summary(self) -> str:
        level = f"{100 * self.confidence:.0f}%"
        reading = ("excludes zero: a real change at this sample size" if self.excludes_zero
                   else "includes zero: not told apart from noise at this sample size")
        return (f"{self.metric} {self.before:.3f} -> {self.after:.3f} ({self.difference:+.3f}) over {self.n} items; "
                f"{self.fixed} fixed, {self.broken} broken; the {level} paired interval "
                f"[{self.ci_low:+.3f}, {self.ci_high:+.3f}] {reading}.")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}: use one of {', '.join(METRICS)}.")


def task_manager(task_dir: Path = BENCHMARK_DIR) -> TaskManager:
    """The harness's `TaskManager` indexing the task YAMLs of `task_dir` only.

    The harness's own hundreds of task folders are left out (`include_defaults=False`): the
    course needs none of them, and indexing them takes seconds on every call.
    """
    return TaskManager(include_path=str(task_dir), include_defaults=False)


def task_config(manager: TaskManager, task_name: str = TASK_NAME) -> dict:
    """The task's YAML as the harness read it, with its data file made absolute.

    The YAML names the file relative to the project folder (so the `lm_eval` command works from
    there); notebooks run in notebooks/, so the harness gets the absolute path.
    """
    if task_name not in manager.task_index:
        raise ValueError(f"No task {task_name!r} among the harness's tasks here: {', '.join(manager.all_tasks)}.")
    config = copy.deepcopy(manager.task_index[task_name].cfg)
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {split: str(PROJECT_ROOT / path) for split, path in files.items()}
    return config


def load_task(task_name: str = TASK_NAME) -> Task:
    """The benchmark as the harness's Task (its items in `.test_docs()`), read from the local file."""
    manager = task_manager()
    return manager.load([task_config(manager, task_name)])["tasks"][task_name]


def reads_questions_as_chat(tokenizer: PreTrainedTokenizerBase, profile: Profile) -> bool:
    """Whether the harness wraps each question in the model's chat template (`apply_chat_template`).

    Yes for decoder-only models with a chat template (SmolLM2-135M-Instruct, the tiny Llama), no
    for encoder-decoders (FLAN-T5 reads plain text): the same rule as every prompt of the course
    (utils.families.uses_chat_template). The question is then a user turn and each choice is
    scored as the assistant's reply, which is how the instruct model is used, and fine-tuned, in
    the notebooks. Published scores of base models use plain text instead; either way is a fair
    measure of change as long as it stays the same before and after fine-tuning, and it does:
    the rule depends only on the tokenizer, which fine-tuning leaves as it is. (The chat prompt
    ends in a newline, which the harness scores with each choice: see `scored_texts`.)
    """
    return uses_chat_template(tokenizer, profile.is_encoder_decoder)


def harness_model(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, profile: Profile, batch_size: int
) -> HFLM:
    """The model in memory (a transformers or PEFT model) as the harness's `HFLM`: causal or seq2seq as the
    profile's family says."""
    backend = "seq2seq" if profile.is_encoder_decoder else "causal"
    return HFLM(pretrained=model, tokenizer=tokenizer, backend=backend, batch_size=batch_size)


@contextmanager
def _harness_quiet() -> Iterator[None]:
    """Keep the harness's warnings and progress notes out of the notebook (its errors still show)."""
    logger = logging.getLogger("lm_eval")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def run_benchmark(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    profile: Profile,
    limit: int | None = None,
    confidence: float = 0.95,
    batch_size: int | None = None,
) -> BenchmarkResult:
    """Score `model` on the course's benchmark with lm-evaluation-harness's `simple_evaluate`.

    `limit`: only the first `limit` items (tests, quick looks). Zero-shot, every log-likelihood
    kept (`log_samples=True`). The harness's global seeding is turned off, so a benchmark in the
    middle of a notebook leaves the notebook's random state as it was; the model is put back in
    training mode if it was in it (the harness switches it to eval mode). Scored in the precision the
    profile trains in, as notebooks generate: from the model's bf16 copy where it trains under bf16
    autocast (utils.models.inference_copy), else from the model itself.
    """
    was_training = model.training
    manager = task_manager()
    config = task_config(manager)
    chat = reads_questions_as_chat(tokenizer, profile)
    started = time.perf_counter()
    try:
        with _harness_quiet(), explained_out_of_memory("scoring the benchmark", memory_sizes(profile)):
            scored = inference_copy(model, autocast_dtype_name(profile))
            lm = harness_model(scored, tokenizer, profile, batch_size or profile.eval_batch_size)
            output = simple_evaluate(
                model=lm, tasks=[config], task_manager=manager, limit=limit, log_samples=True,
                apply_chat_template=chat,
                random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            )
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    scores = output["results"][TASK_NAME]
    items = [_item_scores(sample) for sample in sorted(output["samples"][TASK_NAME], key=lambda s: s["doc_id"])]
    n = len(items)
    return BenchmarkResult(
        task=TASK_NAME,
        n=n,
        acc=float(scores["acc,none"]),
        acc_norm=float(scores["acc_norm,none"]),
        acc_interval=proportion_interval(sum(item.correct for item in items), n, confidence),
        acc_norm_interval=proportion_interval(sum(item.correct_norm for item in items), n, confidence),
        confidence=confidence,
        chat_template=chat,
        seconds=seconds,
        items=items,
    )


def scored_texts(context: str, continuation: str) -> tuple[str, str]:
    """The (prompt, continuation) the harness scores for a request: whitespace that ends the context
    is moved to the start of the continuation, so a word keeps the space (or newline) before it, as
    tokenizers see words. With a chat template the prompt ends in "<|im_start|>assistant\n": each
    choice is scored as "\n" + choice, the same newline for every choice of the question."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def _item_scores(sample: dict) -> ItemScores:
    """One entry of the harness's sample log as ItemScores: `arguments` holds the (context, continuation)
    request of each choice and `filtered_resps` its (log-likelihood, is_greedy), in the order of the choices."""
    doc = sample["doc"]
    texts = [scored_texts(context, continuation) for context, continuation in sample["arguments"]]
    return ItemScores(
        index=int(sample["doc_id"]),
        id=doc["id"],
        question=doc["question"],
        choices=list(doc["choices"]),
        gold=int(sample["target"]),
        loglikelihoods=[float(loglikelihood) for loglikelihood, _ in sample["filtered_resps"]],
        prompt=texts[0][0],
        continuations=[continuation for _, continuation in texts],
    )


def describe_item(item: ItemScores) -> str:
    """One question's scoring as a small table: each choice's log-likelihood (total and per character),
    the gold answer, and the choices the model picks under acc and acc_norm."""
    lines = [f"{item.id}: {item.question}", f"{'':3}{'choice':<36}{'log-likelihood':>15}{'per char':>10}"]
    for i, (choice, loglikelihood) in enumerate(zip(item.choices, item.loglikelihoods)):
        marks = " ".join(mark for mark, on in (("gold", i == item.gold), ("<- acc", i == item.predicted),
                                               ("<- acc_norm", i == item.predicted_norm)) if on)
        lines.append(f"{'ABCD'[i] if i < 4 else i:<3}{choice:<36.36}{loglikelihood:>15.3f}"
                     f"{loglikelihood / len(choice):>10.3f}  {marks}")
    return "\n".join(lines)


def compare_correctness(
    right_before: list[bool], right_after: list[bool], metric: str, confidence: float = 0.95
) -> BenchmarkComparison:
    """Share right after - before over the same items, with a paired interval (+1 fixed, -1 broken, 0 unchanged)."""
    if len(right_before) != len(right_after):
        raise ValueError("before and after must judge the same items.")
    paired = paired_difference([float(r) for r in right_before], [float(r) for r in right_after], confidence)
    return BenchmarkComparison(
        metric=metric,
        n=paired["n"],
        before=paired["before_mean"],
        after=paired["after_mean"],
        difference=paired["difference"],
        ci_low=paired["ci_low"],
        ci_high=paired["ci_high"],
        confidence=confidence,
        fixed=sum(not b and a for b, a in zip(right_before, right_after)),
        broken=sum(b and not a for b, a in zip(right_before, right_after)),
    )


def compare_results(
    before: BenchmarkResult, after: BenchmarkResult, metric: str = "acc", confidence: float = 0.95
) -> BenchmarkComparison:
    """Accuracy after - before on the same items, with a paired interval (utils.stats.paired_difference).

    Each item counts 1 when the model picks the gold choice and 0 when not; the per-item
    differences (after - before: +1 fixed, -1 broken, 0 unchanged) get a t-based interval of their
    mean. Pairing the items removes the items' difficulty from the noise, so the interval is
    narrower than one built from the two accuracies as if they were independent.
    """
    _check_metric(metric)
    if [item.id for item in before.items] != [item.id for item in after.items]:
        raise ValueError("before and after must score the same items in the same order (same benchmark, same limit).")
    return compare_correctness(before.correctness(metric), after.correctness(metric), metric, confidence)


def benchmark_record(change: BenchmarkComparison, seconds: float) -> dict:
    """What a benchmark comparison records: accuracy before and after, the paired interval, items and seconds."""
    return {"variant": "benchmark", "benchmark_before": change.before, "benchmark_after": change.after,
            "benchmark_ci_low": change.ci_low, "benchmark_ci_high": change.ci_high, "benchmark_items": change.n,
            "benchmark_seconds": seconds}
