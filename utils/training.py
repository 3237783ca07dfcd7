"""Supervised fine-tuning with the transformers Trainer, for every method (full, LoRA, prompt tuning, QLoRA).

Checkpoints go to runs/<profile>/checkpoints/<name>/. Rerunning the same training
resumes from the last checkpoint after an interruption, and reuses the finished model
when the same training already completed.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from utils.data import training_collator
from utils.families import answer_loss
from utils.models import resolve_device, training_precision
from utils.plumbing.files import runs_dir
from utils.plumbing.measure import PeakMemory
from utils.plumbing.out_of_memory import explained_out_of_memory
from utils.plumbing.run_state import RunFolder, checkpoint_step, fingerprint
from utils.profiles import Profile, memory_sizes


@dataclass
class TrainingRun:
    """What a training run produced and measured."""

    model: PreTrainedModel
    output_dir: Path
    history: list[dict]  # the Trainer's log history: train and eval losses by step
    train_seconds: float
    tokens_per_second: float
    peak_memory_mb: float
    reused: bool  # True when a finished run was loaded instead of trained
    step_seconds: float | None = None  # of train_seconds, those in optimizer steps (None: not timed apart)

    @property
    def other_seconds(self) -> float | None:
        """Seconds not spent in optimizer steps: evaluation, checkpoints, start-up."""
        return None if self.step_seconds is None else self.train_seconds - self.step_seconds

    def summary(self) -> str:
        """How long the run took, and where the time went."""
        reused = " (reused: the time of the original run)" if self.reused else ""
        if self.step_seconds is None:
            return f"{self.train_seconds:.0f} s{reused}, peak memory {self.peak_memory_mb:,.0f} MB"
        return (f"{self.train_seconds:.0f} s{reused}: {self.step_seconds:.0f} s in training steps "
                f"({self.tokens_per_second:.0f} tokens/s), {self.other_seconds:.0f} s evaluating, saving "
                f"checkpoints and starting; peak memory {self.peak_memory_mb:,.0f} MB")

    def losses(self) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(step, train loss) and (step, validation loss) pairs, for plots."""
        train = [(h["step"], h["loss"]) for h in self.history if "loss" in h]
        validation = [(h["step"], h["eval_loss"]) for h in self.history if "eval_loss" in h]
        return train, validation


class StepTimer(TrainerCallback):
    """Seconds spent inside optimizer steps (forward, backward, update): evaluation and checkpoints,
    which the Trainer runs between steps, are left out."""

    def __init__(self):
        self.seconds = 0.0
        self._started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None


MIN_OPTIMIZER_STEPS = 8  # fewer updates than this show little of what a method does


def batch_and_steps(profile: Profile, examples: int, epochs: float | None = None) -> tuple[int, int]:
    """(batch size, optimizer steps) for `examples` training examples under the profile's settings.

    A small slice at a large batch (notebook 03's rank sweep: 32 rows at the `gpu` batch of 32)
    would train for one step: the batch then shrinks until the run makes at least
    MIN_OPTIMIZER_STEPS updates, with the same passes over the data. A profile's `max_steps`
    (the tiny and test sizes) is kept as it is.
    """
    if profile.max_steps > 0:
        return profile.batch_size, profile.max_steps
    epochs = epochs or profile.epochs
    batch = profile.batch_size
    if math.ceil(examples / batch) * epochs < MIN_OPTIMIZER_STEPS:
        batch = max(1, math.floor(examples * epochs / MIN_OPTIMIZER_STEPS))
    return batch, max(MIN_OPTIMIZER_STEPS, math.ceil(math.ceil(examples / batch) * epochs))


TRAINER_OPTIMIZER = "adamw_torch_fused"  # AdamW updating every weight in one kernel (CPU and CUDA); named, not defaulted


def trainer_settings(
    profile: Profile, output_dir: Path, learning_rate: float, steps: int, batch_size: int, eval_batch_size: int,
    evaluate: bool = True,
) -> dict:
    """The Trainer arguments every course training shares (supervised and reward model): linear decay,
    four evaluations and checkpoints per run, the profile's device, precision and seed, no reporting."""
    interval = max(1, math.ceil(steps / 4))
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=learning_rate,
        max_steps=steps,
        optim=TRAINER_OPTIMIZER,
        weight_decay=0.01,
        warmup_steps=steps // 10 if steps >= 20 else 0,  # a warm-up step runs at lr 0: none on short runs
        lr_scheduler_type="linear",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=interval,
        logging_steps=1,
        save_strategy="steps",
        save_steps=interval,
        save_total_limit=1,  # the newest checkpoint is all a resume needs
        report_to="none",
        use_cpu=resolve_device(profile).type == "cpu",
        bf16=training_precision(profile)[0] == torch.bfloat16,  # autocast; the trained weights stay float32
        seed=profile.seed,
        data_seed=profile.seed,
        dataloader_num_workers=0,
        disable_tqdm=os.environ.get("TQDM_DISABLE") == "1",
    )


def per_process_batch(batch_size: int, processes: int) -> int:
    """Each process's share of the batch, so that several processes (DDP) train on the same global batch."""
    if batch_size % processes:
        raise ValueError(f"A batch of {batch_size} does not split evenly over {processes} processes: "
                         f"launch a number of processes that divides it.")
    return batch_size // processes


def training_arguments(
    profile: Profile, output_dir: Path, learning_rate: float, steps: int, batch_size: int | None = None,
    evaluate: bool = True, **overrides
) -> TrainingArguments:
    """TrainingArguments from the profile (`batch_size` replaces its batch): four evaluations (unless
    `evaluate` is False) and four checkpoints per run."""
    settings = trainer_settings(profile, output_dir, learning_rate, steps, batch_size or profile.batch_size,
                                profile.eval_batch_size, evaluate)
    settings["train_sampling_strategy"] = "group_by_length"  # similar lengths per batch: less padding, faster steps
    settings["label_names"] = ["labels"]  # so evaluation goes through AnswerLossTrainer.compute_loss, PEFT models too
    settings["prediction_loss_only"] = True  # evaluation needs the loss, not every position's logits kept in memory
    settings.update(overrides)
    return TrainingArguments(**settings)


class AnswerLossTrainer(Trainer):
    """The transformers Trainer, with the loss computed only where labels are (utils.families.answer_loss)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = answer_loss(model, inputs)
        return (loss, {}) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        """Validate without moving the random numbers: training with a validation set or without one draws the
        same dropout masks and shuffles the same way (the evaluation loader would otherwise draw a seed)."""
        with torch.random.fork_rng():
            return super().evaluate(*args, **kwargs)


def training_fingerprint(arguments: TrainingArguments, train_dataset: Dataset, identity: str) -> str:
    """What makes two trainings the same: every training argument but where it writes, the model, the data."""
    settings = {k: str(v) for k, v in arguments.to_dict().items() if k not in ("output_dir", "disable_tqdm")}
    return fingerprint(settings, identity, (list(train_dataset[column]) for column in ("input_ids", "labels")))


def model_identity(model: PreTrainedModel) -> str:
    """What makes a checkpoint belong to `model`: its class, the model it was loaded from (Hub id or
    folder), the name and shape of every parameter (the architecture, the adapter and its rank), and
    the adapter settings that no shape shows (LoRA's alpha and dropout)."""
    config = getattr(model, "config", None)
    source = getattr(config, "name_or_path", "") or ""
    shapes = [[name, list(parameter.shape), parameter.requires_grad] for name, parameter in model.named_parameters()]
    peft_configs = sorted(getattr(model, "peft_config", {}).items())
    adapters = {name: [adapter.lora_alpha, adapter.lora_dropout] for name, adapter in peft_configs
                if hasattr(adapter, "lora_dropout")}
    identity = [type(model).__name__, source, shapes]
    return json.dumps(identity + [adapters] if adapters else identity)


def keep_fp32_master_weights(model: torch.nn.Module) -> bool:
    """Cast `model` to float32 when it would train weights stored in 16 bits; True when it did.

    AdamW's update of a bf16 weight is rounded to bf16: lr 1e-4 moves no weight above about
    0.05, silently. Training the base weights (full fine-tuning) therefore keeps them in float32
    and computes in bf16 under autocast (the Trainer's `bf16=True`), the usual mixed precision.
    Frozen 16-bit bases with float32 adapters (LoRA, QLoRA, prompt tuning) are left as they are.
    """
    low_precision = [p for p in model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if hasattr(model, "peft_config"):  # only what trains: the frozen base keeps its 16 bits
        for parameter in low_precision:
            parameter.data = parameter.data.float()
    elif low_precision:
        model.float()
    return bool(low_precision)


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    profile: Profile,
    name: str,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    learning_rate: float,
    epochs: float | None = None,
    **argument_overrides,
) -> TrainingRun:
    """Fine-tune `model` (full, or with a PEFT adapter attached) and measure the run.

    `name` names the checkpoint folder (runs/<profile>/checkpoints/<name>). The model is
    trained in place; the same object is returned in the TrainingRun. The validation loss on
    `eval_dataset` is measured four times during the run; `eval_dataset=None` measures none, for
    runs whose loss curve nobody reads (each measurement is a forward pass over the whole set).
    """
    keep_fp32_master_weights(model)
    output_dir = runs_dir(profile.run_name) / "checkpoints" / name
    batch_size, steps = batch_and_steps(profile, len(train_dataset), epochs)
    processes = PartialState()  # one, or several under `accelerate launch` (then the Trainer runs DDP)
    arguments = training_arguments(profile, output_dir, learning_rate, steps,
                                   per_process_batch(batch_size, processes.num_processes),
                                   evaluate=eval_dataset is not None, **argument_overrides)
    run = RunFolder(output_dir, training_fingerprint(arguments, train_dataset, f"{name}:{model_identity(model)}"))
    with processes.main_process_first():  # one process tidies the folder; the others then find it ready
        if processes.is_main_process:
            run.claim()  # checkpoints of another configuration (or another model) under the same name: never resumed
            run.last_checkpoint("trainer_state.json")  # deletes checkpoints cut off while being written
    record = run.finished()
    if record:
        _load_final_weights(model, output_dir / "final")
        print(f"Reusing the finished training in {output_dir} (delete the folder to train again).")
        return TrainingRun(model, output_dir, record["history"], record["train_seconds"],
                           record["tokens_per_second"], record["peak_memory_mb"], reused=True,
                           step_seconds=record.get("step_seconds"))
    timer = StepTimer()
    trainer = AnswerLossTrainer(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=training_collator(tokenizer, model),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    last = run.last_checkpoint("trainer_state.json")  # the Trainer writes trainer_state.json last
    if last:
        print(f"Resuming from {last}")
    with PeakMemory(resolve_device(profile)) as memory, explained_out_of_memory(f"training {name}", memory_sizes(profile)):
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    remove_autocast_wrapper(trainer)
    # Throughput of the training steps alone, in real (unpadded) tokens: mean example length x batch
    # size x steps run here, over the seconds inside those steps (not evaluation or checkpoints).
    mean_tokens = sum(len(ids) for ids in train_dataset["input_ids"]) / max(len(train_dataset), 1)
    steps_run = trainer.state.global_step - (checkpoint_step(last) if last else 0)
    global_batch = arguments.per_device_train_batch_size * processes.num_processes
    tokens_per_second = mean_tokens * global_batch * steps_run / max(timer.seconds, 1e-9)
    trainer.save_model(str(output_dir / "final"))
    history = trainer.state.log_history
    if processes.is_main_process:
        run.finish({
            "history": history, "train_seconds": memory.seconds, "step_seconds": timer.seconds,
            "tokens_per_second": tokens_per_second, "peak_memory_mb": memory.peak_mb,
        })
    processes.wait_for_everyone()
    return TrainingRun(model, output_dir, history, memory.seconds, tokens_per_second, memory.peak_mb, reused=False,
                       step_seconds=timer.seconds)


def remove_autocast_wrapper(trainer: Trainer) -> None:
    """Give the trained model back its own `forward`, which mixed precision wrapped in autocast for training.

    Under `bf16=True` accelerate wraps `model.forward` in bf16 autocast, and the Trainer leaves the
    wrapper on: without this, every later pass of a model trained in this process (perplexity, a
    benchmark, scores) would compute in bf16, and the same model loaded from its checkpoint in float32.
    """
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def _load_final_weights(model: PreTrainedModel, folder: Path) -> None:
    """Load saved weights (full model or adapter) into `model` in place."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No safetensors weights in {folder}")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        result = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
        if missing or result.unexpected_keys:
            raise ValueError(f"{folder} holds weights of another model ({missing or result.unexpected_keys})")
