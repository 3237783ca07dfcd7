"""The course's multiple-choice benchmark, run by lm-evaluation-harness on the models the notebooks hold."""

import json
import math
import socket
from collections import Counter
from dataclasses import replace

import pytest
import torch

from utils.adapters import add_lora
from utils.benchmarks import (
    BENCHMARK_DIR,
    TASK_NAME,
    BenchmarkResult,
    ItemScores,
    compare_results,
    describe_item,
    load_task,
    run_benchmark,
    task_manager,
)
from utils.families import answer_logits_and_hidden
from utils.ppo_terms import logprobs_from_logits
from utils.prompts import encode, model_input

ROWS = [json.loads(line) for line in (BENCHMARK_DIR / "everyday_mc.jsonl").read_text(encoding="utf-8").splitlines()]


def course_loglikelihood(model, tokenizer, profile, prompt: str, continuation: str) -> float:
    """log p(continuation | prompt) computed by the course's own code: the sum of the continuation's token log-probs."""
    query = encode(tokenizer, [prompt], profile.is_encoder_decoder, return_tensors="pt")
    response = tokenizer([continuation], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits, _ = answer_logits_and_hidden(
            model, profile.is_encoder_decoder, query["input_ids"], query["attention_mask"],
            response["input_ids"], response["attention_mask"], getattr(model.config, "decoder_start_token_id", None),
        )
    return float(logprobs_from_logits(logits, response["input_ids"]).sum())


def scored_as_chat(profile) -> bool:
    return not profile.is_encoder_decoder  # both tiny tokenizers: the decoder-only one has a chat template


def item(choices, loglikelihoods, gold, id="x") -> ItemScores:
    return ItemScores(index=0, id=id, question="Q?", choices=choices, gold=gold, loglikelihoods=loglikelihoods,
                      prompt="Question: Q?\nAnswer:", continuations=[" " + c for c in choices])


def result_of(items: list[ItemScores]) -> BenchmarkResult:
    right = sum(i.correct for i in items) / len(items)
    right_norm = sum(i.correct_norm for i in items) / len(items)
    return BenchmarkResult(task=TASK_NAME, n=len(items), acc=right, acc_norm=right_norm, acc_interval=(0.0, 1.0),
                           acc_norm_interval=(0.0, 1.0), confidence=0.95, chat_template=False, seconds=0.0, items=items)


@pytest.fixture
def network_attempts(monkeypatch):
    """Every connection or name lookup the code tries, refused and recorded (even one a library swallows)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_the_task_is_the_local_file_read_by_the_harness_from_its_yaml():
    assert task_manager().all_tasks == [TASK_NAME]  # the course's folder only, none of the harness's own tasks

    task = load_task()
    docs = task.test_docs()

    assert task.OUTPUT_TYPE == "multiple_choice"
    assert len(docs) == len(ROWS) >= 100
    assert docs[7] == ROWS[7]
    assert task.doc_to_text(docs[7]) == f"Question: {ROWS[7]['question']}\nAnswer:"
    assert task.doc_to_choice(docs[7]) == ROWS[7]["choices"]
    assert task.doc_to_target(docs[7]) == ROWS[7]["answer"]


def test_every_item_has_four_distinct_choices_and_the_gold_answer_sits_in_each_position_equally_often():
    assert len({row["id"] for row in ROWS}) == len({row["question"] for row in ROWS}) == len(ROWS)
    assert all(len(set(row["choices"])) == len(row["choices"]) == 4 for row in ROWS)
    positions = Counter(row["answer"] for row in ROWS)
    assert sorted(positions) == [0, 1, 2, 3]
    assert max(positions.values()) - min(positions.values()) <= 1  # always answering "A" scores chance, 0.25
    assert f"`everyday_mc.jsonl`: {len(ROWS)} items" in (BENCHMARK_DIR / "README.md").read_text(encoding="utf-8")


def test_both_families_score_a_few_items_offline_with_every_choice_log_likelihood(
    tiny_profile, tiny_model_and_tokenizer, one_thread, network_attempts
):
    model, tokenizer = tiny_model_and_tokenizer
    model.train()

    result = run_benchmark(model, tokenizer, tiny_profile, limit=4)

    assert result.n == 4 and [i.id for i in result.items] == [row["id"] for row in ROWS[:4]]
    assert 0.0 <= result.acc <= 1.0 and 0.0 <= result.acc_norm <= 1.0
    assert result.acc == sum(i.correct for i in result.items) / 4  # the harness's acc, item by item
    assert result.acc_norm == sum(i.correct_norm for i in result.items) / 4
    assert 0.0 <= result.acc_interval[0] <= result.acc <= result.acc_interval[1] <= 1.0
    for scored, row in zip(result.items, ROWS):
        assert scored.choices == row["choices"] and scored.gold == row["answer"]
        assert len(scored.loglikelihoods) == 4 and all(math.isfinite(ll) and ll < 0 for ll in scored.loglikelihoods)
    assert result.chat_template == (not tiny_profile.is_encoder_decoder)
    assert model.training  # put back as it was
    assert network_attempts == []


def test_the_harness_reads_the_course_prompt_and_scores_a_choice_as_the_course_computes_it(
    tiny_profile, tiny_model_and_tokenizer, one_thread
):
    model, tokenizer = tiny_model_and_tokenizer

    scored = run_benchmark(model, tokenizer, tiny_profile, limit=1).items[0]

    course_prompt = model_input(tokenizer, f"Question: {ROWS[0]['question']}\nAnswer:", tiny_profile.is_encoder_decoder)
    delimiter = "" if scored_as_chat(tiny_profile) else " "  # a chat turn's reply starts right after the prompt
    for choice, continuation in zip(ROWS[0]["choices"], scored.continuations, strict=True):
        assert scored.prompt + continuation == course_prompt + delimiter + choice
    for continuation, harness_loglikelihood in zip(scored.continuations, scored.loglikelihoods, strict=True):
        ours = course_loglikelihood(model, tokenizer, tiny_profile, scored.prompt, continuation)
        assert ours == pytest.approx(harness_loglikelihood, abs=1e-4)


def test_a_lora_model_runs_through_the_harness_and_a_fresh_adapter_changes_no_score(
    tiny_profile, tiny_model_and_tokenizer, one_thread
):
    model, tokenizer = tiny_model_and_tokenizer
    base = run_benchmark(model, tokenizer, tiny_profile, limit=2)

    adapted = run_benchmark(add_lora(model), tokenizer, tiny_profile, limit=2)  # LoRA's B starts at zero

    for before, after in zip(base.items, adapted.items, strict=True):
        assert after.loglikelihoods == pytest.approx(before.loglikelihoods, abs=1e-5)


def test_the_harness_scores_in_the_precision_the_profile_trains_in(tiny_profile, tiny_model_and_tokenizer,
                                                                   one_thread, monkeypatch):
    from utils import benchmarks

    model, tokenizer = tiny_model_and_tokenizer
    scored = []
    real = benchmarks.harness_model
    monkeypatch.setattr(benchmarks, "harness_model",
                        lambda network, *args: scored.append(network) or real(network, *args))

    in_float32 = run_benchmark(model, tokenizer, replace(tiny_profile, mixed_precision="no"), limit=1)
    in_bf16 = run_benchmark(model, tokenizer, replace(tiny_profile, mixed_precision="bf16"), limit=1)

    assert scored[0] is model  # float32: the model itself
    assert scored[1] is not model and {p.dtype for p in scored[1].parameters()} == {torch.bfloat16}  # its bf16 copy
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the model is left in float32
    assert in_bf16.items[0].loglikelihoods != in_float32.items[0].loglikelihoods


def test_a_model_compared_with_itself_changes_by_exactly_zero(tiny_profile, tiny_model_and_tokenizer, one_thread):
    model, tokenizer = tiny_model_and_tokenizer
    result = run_benchmark(model, tokenizer, tiny_profile, limit=5)

    comparison = compare_results(result, result)

    assert comparison.n == 5 and comparison.before == comparison.after == result.acc
    assert comparison.difference == comparison.ci_low == comparison.ci_high == 0.0
    assert comparison.fixed == comparison.broken == 0 and not comparison.excludes_zero


def test_the_paired_comparison_counts_fixed_and_broken_items():
    right, wrong = [-1.0, -5.0, -5.0, -5.0], [-5.0, -1.0, -5.0, -5.0]  # gold is choice 0
    choices = ["w", "x", "y", "z"]
    before = result_of([item(choices, wrong, 0, id=str(i)) for i in range(6)])
    after = result_of([item(choices, right if i < 4 else wrong, 0, id=str(i)) for i in range(6)])
    worse = result_of([item(choices, wrong if i < 1 else right, 0, id=str(i)) for i in range(6)])

    gain, loss = compare_results(before, after), compare_results(after, worse)

    assert (gain.before, gain.after, gain.difference, gain.fixed, gain.broken) == (0.0, 4 / 6, 4 / 6, 4, 0)
    assert gain.ci_low < gain.difference < gain.ci_high
    assert loss.fixed == 2 and loss.broken == 1 and loss.difference == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="same items"):
        compare_results(before, result_of(before.items[:5]))


def test_one_item_shows_each_choice_and_which_one_wins_under_acc_and_acc_norm():
    scored = item(["cat", "elephant", "dog", "ox"], [-6.0, -8.0, -4.0, -5.0], gold=1)

    table = describe_item(scored).splitlines()

    assert scored.predicted == 2  # dog: the highest log-likelihood
    assert scored.predicted_norm == 1  # elephant: the highest per character (-1.0)
    assert not scored.correct and scored.correct_norm
    assert "elephant" in table[3] and "gold" in table[3] and "<- acc_norm" in table[3]
    assert "dog" in table[4] and "<- acc" in table[4] and "acc_norm" not in table[4]


@pytest.fixture(scope="module")
def smollm2():
    from utils.models import load_model_and_tokenizer
    from utils.profiles import get_profile

    profile = get_profile("offline")
    model, tokenizer = load_model_and_tokenizer(profile)
    return profile, model, tokenizer


@pytest.mark.offline_model
def test_smollm2_reads_each_question_as_a_chat_turn_and_its_scores_are_the_course_s(smollm2):
    profile, model, tokenizer = smollm2
    profile = replace(profile, mixed_precision="no")  # float32 on every machine, as the course's code computes

    result = run_benchmark(model, tokenizer, profile, limit=2)

    assert result.chat_template and result.items[0].prompt.endswith("<|im_start|>assistant")
    assert result.items[0].continuations[0] == "\n" + ROWS[0]["choices"][0]  # the reply's line starts with the choice
    for scored in result.items:
        for continuation, harness_loglikelihood in zip(scored.continuations, scored.loglikelihoods, strict=True):
            ours = course_loglikelihood(model, tokenizer, profile, scored.prompt, continuation)
            assert ours == pytest.approx(harness_loglikelihood, abs=1e-3)


@pytest.mark.offline_model
def test_smollm2_answers_better_than_chance(smollm2):
    """The first 40 items (the whole benchmark takes over a minute on two cores: bench/ territory)."""
    profile, model, tokenizer = smollm2

    result = run_benchmark(model, tokenizer, profile, limit=40)

    assert result.n == 40
    assert result.chance == 0.25  # four choices each
    assert result.acc_interval[0] > result.chance, result.summary()
