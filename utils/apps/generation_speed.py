"""How fast decoding runs against what the machine allows: milliseconds per decode step and their floor.

A decode step of a transformer reads every weight once (and the key/value cache of the tokens so
far) and does about two operations per weight for each sequence of the batch. On a CPU that is
memory traffic more than arithmetic: the floor of a step is the larger of (bytes read / memory
bandwidth) and (operations / matrix-product speed), both measured here on this machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.generation import generate_ids


@dataclass(frozen=True)
class MachinePeaks:
    """What this machine reaches on simple kernels: bytes read per second, and fp32 matrix-product FLOP/s."""

    read_bytes_per_second: float
    matmul_flops: float


def measure_machine_peaks(megabytes: int = 512, matrix: int = 1024, repeats: int = 5) -> MachinePeaks:
    """Read bandwidth (summing a `megabytes` fp32 tensor) and matmul speed (`matrix` x `matrix` fp32), best of `repeats`."""
    data = torch.ones(megabytes * 2**20 // 4)
    a, b = torch.randn(matrix, matrix), torch.randn(matrix, matrix)
    read, product = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        read.append(time.perf_counter() - started)
        started = time.perf_counter()
        a @ b
        product.append(time.perf_counter() - started)
    return MachinePeaks(data.numel() * 4 / min(read), 2 * matrix**3 / min(product))


def decode_floor_milliseconds(model: PreTrainedModel, batch_size: int, context_tokens: int,
                              peaks: MachinePeaks) -> dict[str, float]:
    """The floor of one decode step: its memory time (weights and key/value cache read once), its
    arithmetic time (two operations per weight and sequence, plus attention over the context), and
    the larger of the two."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    config = getattr(config, "text_config", None) or config
    weights = {p.data_ptr(): p for p in model.parameters()}.values()  # tied weights are read once
    weight_bytes = sum(p.numel() * p.element_size() for p in weights)
    parameters = sum(p.numel() for p in weights)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_decoder_layers", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    element = next(iter(weights)).element_size()
    cache_bytes = 2 * layers * kv_heads * head_dim * context_tokens * batch_size * element
    operations = 2 * parameters * batch_size + 4 * layers * heads * head_dim * context_tokens * batch_size
    memory_ms = 1e3 * (weight_bytes + cache_bytes) / peaks.read_bytes_per_second
    arithmetic_ms = 1e3 * operations / peaks.matmul_flops
    return {"memory_ms": memory_ms, "arithmetic_ms": arithmetic_ms, "floor_ms": max(memory_ms, arithmetic_ms)}


def decode_floor_seconds(model: PreTrainedModel, continuation_lengths: list[int], batch_size: int,
                         context_tokens: int, peaks: MachinePeaks) -> float:
    """The least time that decoding these continuations in batches of `batch_size` can take after the first
    token, which reading the prompt writes: each step at its floor, and as few steps as any batching allows.
    A batch decodes until its longest continuation ends, so the fewest steps come from batching the
    continuations sorted by length (a row of n tokens needs at least n - 1 steps after the first)."""
    lengths = sorted(continuation_lengths, reverse=True)
    seconds = 0.0
    for start in range(0, len(lengths), batch_size):
        rows = len(lengths[start : start + batch_size])
        step = decode_floor_milliseconds(model, rows, context_tokens, peaks)["floor_ms"] / 1e3
        seconds += max(0, lengths[start] - 1) * step
    return seconds


def decode_step_milliseconds(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                             steps: int = 16, repeats: int = 2, **generation_kwargs) -> float:
    """Milliseconds per decode step of `generate` on `prompts` as one batch: a run of `steps` new tokens
    minus a run of one (the prompt's encoding and the first token), over the `steps - 1` steps between;
    each run's fastest of `repeats`."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2 to time decoding apart from the prompt, not {steps}")

    def seconds(new_tokens: int) -> float:
        started = time.perf_counter()
        generate_ids(model, tokenizer, prompts, batch_size=len(prompts), max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens, progress=False, **generation_kwargs)
        return time.perf_counter() - started

    seconds(2)  # warm-up: allocations and kernel choices
    decoding = min(seconds(steps) for _ in range(repeats)) - min(seconds(1) for _ in range(repeats))
    return 1e3 * decoding / (steps - 1)


def prompt_reading_seconds(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                           batch_size: int) -> float:
    """Seconds to read `prompts` (in batches of `batch_size`) and write one token each: the part of
    generation that batching cannot share out, since it is arithmetic that grows with the prompts' tokens."""
    started = time.perf_counter()
    generate_ids(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=1, progress=False)
    return time.perf_counter() - started
