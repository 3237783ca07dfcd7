"""Decode speed against its floor, as bench/generation.py measures it."""

import copy

import pytest
import torch

from utils.apps.generation_speed import (
    MachinePeaks,
    decode_floor_milliseconds,
    decode_floor_seconds,
    decode_step_milliseconds,
    measure_machine_peaks,
    prompt_reading_seconds,
)

PEAKS = MachinePeaks(read_bytes_per_second=10e9, matmul_flops=100e9)


def test_a_decode_step_of_a_batch_takes_measurable_time(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer

    milliseconds = decode_step_milliseconds(model, tokenizer, ["Hello there.", "How are you today?"], steps=12,
                                            repeats=3)

    assert milliseconds > 0
    with pytest.raises(ValueError, match="at least 2"):
        decode_step_milliseconds(model, tokenizer, ["Hello."], steps=1)


def test_reading_the_prompts_is_timed_as_a_batched_generation_of_one_token(tiny_model_and_tokenizer, monkeypatch):
    from utils.apps import generation_speed

    model, tokenizer = tiny_model_and_tokenizer
    calls = []
    real = generation_speed.generate_ids
    monkeypatch.setattr(generation_speed, "generate_ids", lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))

    seconds = prompt_reading_seconds(model, tokenizer, ["Hello there.", "How are you today?", "Fine."], batch_size=2)

    assert seconds > 0
    assert [(c["batch_size"], c["max_new_tokens"]) for c in calls] == [(2, 1)]


def test_weights_in_bf16_halve_the_memory_floor_and_a_larger_batch_raises_only_the_arithmetic(
        tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    weight_bytes = sum(p.numel() * p.element_size() for p in {p.data_ptr(): p for p in model.parameters()}.values())

    fp32 = decode_floor_milliseconds(model, batch_size=1, context_tokens=0, peaks=PEAKS)
    bf16 = decode_floor_milliseconds(copy.deepcopy(model).to(torch.bfloat16), batch_size=1, context_tokens=0,
                                     peaks=PEAKS)
    batch = decode_floor_milliseconds(model, batch_size=16, context_tokens=0, peaks=PEAKS)

    assert fp32["memory_ms"] == pytest.approx(1e3 * weight_bytes / PEAKS.read_bytes_per_second)
    assert bf16["memory_ms"] == pytest.approx(fp32["memory_ms"] / 2)
    assert batch["memory_ms"] == fp32["memory_ms"]
    assert batch["arithmetic_ms"] == pytest.approx(16 * fp32["arithmetic_ms"])
    assert fp32["floor_ms"] == max(fp32["memory_ms"], fp32["arithmetic_ms"])


def test_the_machine_peaks_are_measured_as_positive_rates():
    peaks = measure_machine_peaks(megabytes=8, matrix=128, repeats=2)

    assert peaks.read_bytes_per_second > 1e6 and peaks.matmul_flops > 1e6


def test_the_decode_floor_of_a_batching_counts_the_longest_row_of_each_batch_sorted_by_length(
        tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer

    def step(rows):
        return decode_floor_milliseconds(model, rows, context_tokens=20, peaks=PEAKS)["floor_ms"] / 1e3

    # sorted 9, 6, 3, 1: batches (9, 6) and (3, 1) decode 8 and 2 steps after the first token
    assert decode_floor_seconds(model, [3, 9, 1, 6], 2, 20, PEAKS) == pytest.approx(8 * step(2) + 2 * step(2))
    # a batch of three and a batch of one: 8 steps, then none for a one-token row
    assert decode_floor_seconds(model, [3, 9, 1, 6], 3, 20, PEAKS) == pytest.approx(8 * step(3))
    # one at a time: every row's own steps
    assert decode_floor_seconds(model, [3, 9, 1, 6], 1, 20, PEAKS) == pytest.approx(15 * step(1))
