"""Training steps of every method on the same batch: tokens per second and peak memory.

Each method is measured in its own Python process (`python -m utils measure-training`),
so one method's memory never counts towards another's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from utils.adapters import FEATURE_EXTRACTION_BLOCKS, add_lora, add_prompt_tuning, train_last_blocks_only
from utils.data import TrainingCollator, load_profile_data, tokenize_for_training, training_collator
from utils.families import answer_loss
from utils.models import count_parameters, load_model, load_tokenizer, resolve_device, training_precision
from utils.plumbing.measure import PeakMemory, current_memory_mb, training_memory_parts
from utils.profiles import Profile
from utils.prompts import SOFT_PROMPT_INIT_TEXT
from utils.training import TRAINER_OPTIMIZER, keep_fp32_master_weights

TRAINING_METHODS = ("full", "feature_extraction", "lora", "prompt_tuning", "qlora")


# Where each LoRA method puts its adapters in the notebooks (utils.adapters.LORA_TARGETS).
DEFAULT_LORA_TARGETS = {"lora": "attention", "qlora": "all-linear"}


def model_for_method(
    profile: Profile, method: str, tokenizer, lora_targets: str | None = None
) -> tuple[torch.nn.Module, float]:
    """The model set up for `method` as the notebooks set it up, and the method's learning rate.

    `lora_targets` overrides where LoRA and QLoRA put their adapters (default: DEFAULT_LORA_TARGETS).
    """
    if method in DEFAULT_LORA_TARGETS:
        lora_targets = lora_targets or DEFAULT_LORA_TARGETS[method]
    if method == "full":
        return load_model(profile), profile.full_learning_rate
    if method == "feature_extraction":  # the optimizer of full fine-tuning; only what trains differs
        return train_last_blocks_only(load_model(profile), FEATURE_EXTRACTION_BLOCKS), profile.full_learning_rate
    if method == "lora":
        adapted = add_lora(load_model(profile), rank=profile.lora_rank, targets=lora_targets,
                           dropout=profile.lora_dropout)
        return adapted, profile.peft_learning_rate
    if method == "prompt_tuning":
        model = add_prompt_tuning(load_model(profile), tokenizer, profile.virtual_tokens, SOFT_PROMPT_INIT_TEXT)
        return model, profile.soft_prompt_learning_rate
    if method == "qlora":
        from utils.quantization import add_qlora, load_4bit_model

        model = add_qlora(load_4bit_model(profile), profile, rank=profile.lora_rank, targets=lora_targets)
        return model, profile.peft_learning_rate
    raise ValueError(f"Unknown method {method!r}; choose from {', '.join(TRAINING_METHODS)}.")


def weight_megabytes(model: torch.nn.Module) -> float:
    """Memory the weights and buffers take as loaded (4-bit layers count their packed bytes)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20


def timed_steps(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, steps: int,
                device: torch.device, autocast_dtype: torch.dtype | None = None,
                loss_of: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None) -> tuple[list[float], torch.Tensor]:
    """Seconds of each of `steps` optimizer steps on `batch` after one untimed warm-up step, and the last loss.

    The warm-up pays for allocations and kernel choices; on CUDA each step waits for the GPU to finish.
    `autocast_dtype` computes under autocast in that dtype (mixed precision; the weights keep theirs).
    `loss_of(model, batch)` gives the loss (default: the model's own, from logits at every position).
    """
    loss_of = loss_of or (lambda model, batch: model(**batch).loss)
    seconds = []
    for step in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            seconds.append(time.perf_counter() - started)
    return seconds, loss


def measure_training_steps(
    profile: Profile, method: str, steps: int = 3, batch_size: int | None = None, plain: bool = False,
    lora_targets: str | None = None,
) -> dict:
    """Run one warm-up and `steps` timed AdamW steps of `method` on the first training batch.

    The course's step is the notebooks' (utils.families.answer_loss on the family's padding, under
    the profile's mixed precision, utils.models.training_precision, with the Trainer's fused AdamW); `plain=True` times a plain
    PyTorch step instead: right padding, the model's own loss from logits at every position, fp32, torch's default AdamW. Returns tokens per second (real tokens of the batch,
    padding excluded), peak memory over loading and training (process RSS on CPU, CUDA peak
    allocated on GPU), weight memory and trainable parameters. The memory of the steps is also
    split into parts (utils.plumbing.measure.training_memory_parts): `baseline_mb` is what the
    process held before loading the model, and `activations_and_rest_mb` what the steps' peak holds
    beyond the baseline, the weights, their gradients and the optimizer's states. `lora_targets`
    puts LoRA's and QLoRA's adapters elsewhere than the notebooks do (see model_for_method).
    """
    device = resolve_device(profile)
    batch_size = batch_size or profile.batch_size
    tokenizer = load_tokenizer(profile)
    rows = load_profile_data(profile)["train"].select(range(batch_size))
    features = tokenize_for_training(rows, tokenizer, profile)
    real_tokens = int(sum(len(ids) for ids in features["input_ids"]))
    baseline = current_memory_mb(device)
    with PeakMemory(device) as loading:
        model, learning_rate = model_for_method(profile, method, tokenizer, lora_targets)
    with PeakMemory(device) as memory:
        model.train()
        collate = TrainingCollator(tokenizer, "right") if plain else training_collator(tokenizer, model)
        batch = collate([features[i] for i in range(len(features))])
        batch = {key: value.to(device) for key, value in batch.items()}
        trainable, total = count_parameters(model)
        # The course's step updates with the Trainer's fused AdamW (utils.training.TRAINER_OPTIMIZER); the plain
        # loop with torch's default, one kernel per operation over the list of weights.
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                      fused=not plain and TRAINER_OPTIMIZER == "adamw_torch_fused")
        if plain:
            seconds, loss = timed_steps(model, batch, optimizer, steps, device)
        else:
            keep_fp32_master_weights(model)
            seconds, loss = timed_steps(model, batch, optimizer, steps, device, training_precision(profile)[0],
                                        answer_loss)
    parts = training_memory_parts(model, optimizer)
    return {
        "method": f"{method} (plain loop)" if plain else method,
        "device": device.type,
        "batch_size": batch_size,
        "tokens_per_step": real_tokens,
        "seconds_per_step": sum(seconds) / len(seconds),
        "tokens_per_second": real_tokens * len(seconds) / sum(seconds),
        "peak_memory_mb": max(loading.peak_mb, memory.peak_mb),
        "weight_memory_mb": weight_megabytes(model),
        "lora_targets": (lora_targets or DEFAULT_LORA_TARGETS[method]) if method in DEFAULT_LORA_TARGETS else "",
        "baseline_mb": baseline,
        "steps_peak_mb": memory.peak_mb,
        **parts,
        "activations_and_rest_mb": max(0.0, memory.peak_mb - baseline - sum(parts.values())),
        "trainable_params": trainable,
        "total_params": total,
        "final_loss": float(loss.detach()),
    }


def measure_in_subprocess(
    profile: Profile, method: str, steps: int = 3, batch_size: int | None = None, plain: bool = False,
    lora_targets: str | None = None,
) -> dict:
    """`measure_training_steps` in a fresh Python process; the profile is passed by name and overrides."""
    command = [sys.executable, "-m", "utils", "measure-training", method, "--steps", str(steps)]
    if lora_targets:
        command += ["--lora-targets", lora_targets]
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    if plain:
        command.append("--plain")
    environment = {**os.environ, "COURSE_PROFILE": profile.name}
    if profile.data_label:
        environment["COURSE_DATA"] = profile.data
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Measuring {method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_training_methods(
    profile: Profile, methods: tuple[str, ...] = TRAINING_METHODS, steps: int = 3, batch_size: int | None = None,
    plain: bool = False, lora_targets: str | None = None,
) -> list[dict]:
    """One measurement per method, each in its own process, with ratios to full fine-tuning.

    `plain=True` first times a plain PyTorch step of full fine-tuning on the same model and batch
    (fp32, logits at every position; see measure_training_steps), and gives every row its
    speed relative to it (`speed_vs_plain`). `lora_targets` puts LoRA's and QLoRA's adapters on the
    same layers, so that the two differ in the base model's number format only.
    """
    from tqdm.auto import tqdm

    rows = [measure_in_subprocess(profile, "full", steps, batch_size, plain=True)] if plain else []
    rows += [measure_in_subprocess(profile, method, steps, batch_size, lora_targets=lora_targets)
             for method in tqdm(methods, desc="methods")]
    full = next((r for r in rows if r["method"] == "full"), None)
    for row in rows:
        if full:
            row["speed_vs_full"] = row["tokens_per_second"] / full["tokens_per_second"]
            row["memory_vs_full"] = row["peak_memory_mb"] / full["peak_memory_mb"]
        if plain:
            row["speed_vs_plain"] = row["tokens_per_second"] / rows[0]["tokens_per_second"]
    return rows
