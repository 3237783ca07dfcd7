"""Batched generation vs one example at a time (as the original labs did), same inputs, same model.

    .venv/bin/python bench/generation.py [--profile offline] [--examples 16] [--batch-size 8] [--shots 0]
        [--decode-steps 16] [--variants whole-prompts static-cache compiled bf16-weights bf16-autocast]

Both runs, and the decode timing, compute in float32, as the notebooks generate where the profile trains
in float32; where it trains under bf16 autocast they generate from a bf16 copy, the `bf16-weights` variant.
`--precision bfloat16` runs everything from that copy instead (the variants then change the copy).
Greedy decoding must give the same summaries both ways; the script checks that, then
prints both timings and the speed ratio, and the ratio's ceilings on this machine: one at a time
against the batched reading of the prompts alone (what batching cannot share out), then against that
reading plus the same summaries written with every decode step at its floor. Then the milliseconds of
one decode step, of one row and at the batch size, against that step's floor on this machine
(utils/apps/generation_speed.py: weights and cache read at the measured bandwidth, or the arithmetic at
the measured matmul speed, whichever is longer). `--variants` times other ways on the same batched run
(every prompt read whole, without sharing the batch's common start; what transformers offers: a static
key/value cache, compiled decoding, the weights in bf16, bf16 autocast over float32 weights), and counts
how many summaries stay identical to the first run's. Every setting's summaries are scored against the
test references (ROUGE-1, best reference), so a faster setting that writes other summaries shows whether
they score the same.
`--shots N` builds notebook 01's few-shot prompts, whose worked examples every prompt shares.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import torch

from utils.apps.generation_speed import (
    decode_floor_milliseconds,
    decode_floor_seconds,
    decode_step_milliseconds,
    measure_machine_peaks,
    prompt_reading_seconds,
)
from utils.course import configure_threads
from utils.data import fit_prompt, load_profile_data, prompts_for
from utils.generation import decode_generations, generate, generate_ids
from utils.metrics import rouge_best_and_mean
from utils.models import context_window, inference_copy, load_model_and_tokenizer
from utils.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "offline"))
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--decode-steps", type=int, default=16, help="new tokens of the decode timing (at least 2)")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="generate from the model (float32) or from its bf16 copy, as the notebooks do where "
                             "the profile trains under bf16 autocast")
    parser.add_argument("--shots", type=int, default=0,
                        help="worked examples before each dialogue, as notebook 01 builds few-shot prompts")
    args = parser.parse_args()

    threads = configure_threads()
    profile = get_profile(args.profile)
    model, tokenizer = load_model_and_tokenizer(profile)
    if args.precision == "bfloat16":
        model = inference_copy(model, "bfloat16")
    test = load_profile_data(profile)["test"]
    dialogues = list(test["dialogue"])[: args.examples]
    references = list(test["references"])[: args.examples]
    if args.shots:  # notebook 01's few-shot prompts: the shortest training dialogues as worked examples
        train = sorted(load_profile_data(profile)["train"], key=lambda row: len(row["dialogue"]))
        examples = [(row["dialogue"], row["summary"]) for row in train[: args.shots]]
        window = context_window(model, tokenizer)
        prompts = [fit_prompt(tokenizer, profile, d, examples=examples, max_tokens=window) for d in dialogues]
    else:
        prompts = prompts_for(dialogues, tokenizer, profile)
    max_new_tokens = args.max_new_tokens or profile.max_new_tokens

    timings, token_ids = {}, {}
    for name, batch_size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        started = time.perf_counter()
        token_ids[name] = generate_ids(model, tokenizer, prompts, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, description=name)
        timings[name] = time.perf_counter() - started

    single, batched = (decode_generations(tokenizer, ids) for ids in token_ids.values())
    same = sum(a == b for a, b in zip(single, batched))
    print(f"\nprofile {profile.name}, {len(prompts)} prompts, max_new_tokens {max_new_tokens}, {args.precision}, "
          f"{threads} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    for name, seconds in timings.items():
        print(f"{name:>16}: {seconds:7.1f} s  ({len(prompts) / seconds:.2f} summaries/s)")
    first, second = timings.values()
    print(f"speed-up of batching: {first / second:.2f}x")
    reading = prompt_reading_seconds(model, tokenizer, prompts, args.batch_size)
    print(f"reading the prompts batched, one new token each: {reading:.1f} s, so batching can be at most "
          f"{first / reading:.1f}x faster here, even if writing the summaries cost nothing")
    peaks = measure_machine_peaks()
    lengths = [len(ids) for ids in token_ids[f"batched ({args.batch_size})"]]
    prompt_tokens = [len(tokenizer(p)["input_ids"]) for p in prompts]
    writing = decode_floor_seconds(model, lengths, args.batch_size,
                                   round(sum(prompt_tokens) / len(prompts) + sum(lengths) / len(lengths) / 2), peaks)
    print(f"writing the same summaries with every decode step at its floor: {writing:.1f} s more, so batching "
          f"can be at most {first / (reading + writing):.1f}x faster here")
    print(f"identical greedy outputs: {same}/{len(prompts)}")
    if same != len(prompts):
        for a, b in zip(single, batched):
            if a != b:
                print(f"  differs:\n    one at a time: {a!r}\n    batched:       {b!r}")
                break

    decode_prompts = prompts[: args.batch_size]
    context = sum(prompt_tokens[: args.batch_size]) / len(decode_prompts) + args.decode_steps / 2
    print(f"\nthis machine: reads {peaks.read_bytes_per_second / 1e9:.1f} GB/s, "
          f"fp32 matrix products at {peaks.matmul_flops / 1e9:.0f} GFLOP/s")
    one_row_ms = decode_step_milliseconds(model, tokenizer, decode_prompts[:1], args.decode_steps)
    one_row_floor = decode_floor_milliseconds(model, 1, round(context), peaks)["floor_ms"]
    print(f"one row's decode step ({args.precision}): {one_row_ms:.1f} ms, {one_row_ms / one_row_floor:.1f}x its floor "
          f"of {one_row_floor:.1f} ms")
    rows = {f"{args.precision}, dynamic cache": (model, {}, contextlib.nullcontext, batched,
                                       timings[f"batched ({args.batch_size})"])}
    for variant in args.variants:
        variant_model, options, computing = VARIANTS[variant](model)
        started = time.perf_counter()
        with computing():
            variant_outputs = generate(variant_model, tokenizer, prompts, batch_size=args.batch_size,
                                       max_new_tokens=max_new_tokens, description=variant, **options)
        rows[variant] = (variant_model, options, computing, variant_outputs, time.perf_counter() - started)
    print(f"\n| setting | batched ({args.batch_size}) s | decode ms / step | floor ms | x floor | same summaries "
          f"| ROUGE-1 |")
    print("|---|---|---|---|---|---|---|")
    for name, (variant_model, options, computing, variant_outputs, seconds) in rows.items():
        with computing():
            step_ms = decode_step_milliseconds(variant_model, tokenizer, decode_prompts, args.decode_steps, **options)
        floor = decode_floor_milliseconds(variant_model, len(decode_prompts), round(context), peaks)
        same_as_first = sum(a == b for a, b in zip(variant_outputs, batched))
        rouge1 = rouge_best_and_mean(variant_outputs, references)["rouge1"]
        print(f"| {name} | {seconds:.1f} | {step_ms:.1f} | {floor['floor_ms']:.1f} (memory {floor['memory_ms']:.1f}, "
              f"arithmetic {floor['arithmetic_ms']:.1f}) | {step_ms / floor['floor_ms']:.1f} | "
              f"{same_as_first}/{len(prompts)} | {rouge1:.4f} |")


def bf16_weights(model):
    """The copy with its weights in bf16 that the notebooks generate from where the profile trains under
    bf16 autocast (utils.models.inference_copy; training keeps float32 weights)."""
    return inference_copy(model, "bfloat16"), {}, contextlib.nullcontext


def bf16_autocast(model):
    """The float32 model under bf16 autocast, as the course trains where the CPU computes bf16: each
    matrix product casts its weight to bf16, so no copy of the model is kept."""
    return model, {}, lambda: torch.autocast(model.device.type, dtype=torch.bfloat16)


def compiled_decoding(model):
    """Transformers' compiled decoding: a static key/value cache and the forward pass compiled with
    torch.compile (generate does it by itself on GPUs; on a CPU only when asked). The first batched
    run pays the compilation, as a notebook would."""
    from transformers import CompileConfig

    config = CompileConfig()
    config._compile_all_devices = True  # a class attribute, not an argument: generate's switch for CPUs
    return model, {"cache_implementation": "static", "compile_config": config}, contextlib.nullcontext


VARIANTS = {
    # each prompt's shared start read again
    "whole-prompts": lambda model: (model, {"share_prompt_start": False}, contextlib.nullcontext),
    "static-cache": lambda model: (model, {"cache_implementation": "static"}, contextlib.nullcontext),
    "bf16-weights": bf16_weights,
    "bf16-autocast": bf16_autocast,
    "compiled": compiled_decoding,
}


if __name__ == "__main__":
    main()
