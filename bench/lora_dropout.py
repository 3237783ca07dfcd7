"""What LoRA's dropout costs a training step, with and without it, in one run.

    OMP_NUM_THREADS=2 COURSE_PROFILE=offline .venv/bin/python bench/lora_dropout.py --repeats 2

Builds the profile's model with a LoRA adapter on the attention (notebook 03) and, where 4-bit
loading works, a 4-bit model with LoRA on every linear layer (notebook 05), each once with dropout
0.05 (the original lab's) and once without. Times optimizer steps on the profile's first training
batch with the course's answer-only loss, under the profile's training precision; the four models
are timed alternately, `--repeats` rounds of `--steps` steps each after one warm-up step, and the
median seconds per step are printed. With dropout every adapted layer draws a random mask as large
as its input at every step: on a CPU that costs more than the adapter's own small products.
"""

from __future__ import annotations

import argparse
import time
from statistics import median

import pandas as pd
import torch
from peft import prepare_model_for_kbit_training

from utils import course
from utils.adapters import add_lora
from utils.data import batches, load_profile_data, tokenize_for_training
from utils.families import answer_loss
from utils.models import autocast, autocast_dtype_name, load_model, load_tokenizer, resolve_device
from utils.quantization import bitsandbytes_problem, load_4bit_model

DROPOUTS = (0.05, 0.0)


def adapted_models(profile) -> dict[tuple[str, float], torch.nn.Module]:
    """(adapter, dropout) -> a freshly adapted model, for LoRA on the attention and, where it runs, QLoRA."""
    models = {}
    for dropout in DROPOUTS:
        adapted = add_lora(load_model(profile), rank=profile.lora_rank, dropout=dropout)
        models["LoRA on query and value", dropout] = adapted
    if bitsandbytes_problem(resolve_device(profile)) is None:
        for dropout in DROPOUTS:
            quantized = prepare_model_for_kbit_training(load_4bit_model(profile), use_gradient_checkpointing=False)
            models["QLoRA on every linear layer", dropout] = add_lora(quantized, rank=profile.lora_rank,
                                                                      targets="all-linear", dropout=dropout)
    return models


def step_seconds(model: torch.nn.Module, batch: dict, precision: str | None, steps: int) -> float:
    """Mean seconds of `steps` AdamW steps on `batch` (forward, backward, update)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    started = time.perf_counter()
    for _ in range(steps):
        with autocast(model.device, precision):
            loss = answer_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of each model")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per round")
    args = parser.parse_args()
    profile = course.start("bench_lora_dropout").profile
    tokenizer = load_tokenizer(profile)
    train_set = tokenize_for_training(load_profile_data(profile)["train"], tokenizer, profile)
    precision = autocast_dtype_name(profile)
    models = adapted_models(profile)
    batch = next(iter(batches(train_set, tokenizer, next(iter(models.values())), profile.batch_size)))
    for model in models.values():
        model.train()
        step_seconds(model, batch, precision, 1)  # warm-up
    seconds: dict[tuple[str, float], list[float]] = {key: [] for key in models}
    for _ in range(args.repeats):
        for key, model in models.items():
            seconds[key].append(step_seconds(model, batch, precision, args.steps))
    rows = []
    for adapter in dict.fromkeys(name for name, _ in models):
        with_dropout, without = median(seconds[adapter, DROPOUTS[0]]), median(seconds[adapter, DROPOUTS[1]])
        rows.append({"adapter": adapter, f"s/step, dropout {DROPOUTS[0]}": f"{with_dropout:.2f}",
                     "s/step, no dropout": f"{without:.2f}", "time saved": f"{1 - without / with_dropout:.0%}"})
    print(f"\n{profile.name}: batch {tuple(batch['input_ids'].shape)}, precision {precision or 'float32'}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} round(s) of {args.steps} step(s)\n")
    print(pd.DataFrame(rows).set_index("adapter").to_markdown())


if __name__ == "__main__":
    main()
