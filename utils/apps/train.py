"""`python -m utils train METHOD`: a notebook's training from the command line, on one process or several.

The same code as the notebooks (utils.training.train with the model set up as the notebooks set it
up) and the same checkpoint folders, so a training the notebooks finished is reused here, and the
other way round. Under `accelerate launch` the Trainer runs data-parallel (DDP) and each process
takes an equal share of the profile's batch, so the global batch stays the profile's:

    python -m utils train lora
    accelerate launch --num_processes 2 -m utils train full                       # two GPUs, DDP
    accelerate launch --cpu --num_processes 2 -m utils train full                 # two CPU processes (gloo)
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m utils train full   # FSDP, several GPUs
"""

from __future__ import annotations

from utils.apps.benchmark import DEFAULT_LORA_TARGETS, TRAINING_METHODS, model_for_method
from utils.data import load_profile_data, tokenize_for_training
from utils.models import load_tokenizer
from utils.profiles import Profile
from utils.training import TrainingRun, train

# The methods this command trains (QLoRA's 4-bit layers need CUDA to train at speed, but run on CPU too).
TRAINABLE = TRAINING_METHODS


def checkpoint_name(method: str, rank: int) -> str:
    """The checkpoint folder the notebooks use for each method, so finished trainings are shared."""
    names = {"full": "full", "feature_extraction": "feature-extraction", "lora": f"lora-r{rank}",
             "prompt_tuning": "prompt-tuning-text", "qlora": f"qlora-r{rank}"}
    if method not in names:
        raise ValueError(f"Unknown method {method!r}; choose from {', '.join(names)}.")
    return names[method]


def run_name(method: str, rank: int, lora_targets: str | None = None) -> str:
    """checkpoint_name, with the adapters' place appended when it is not where the notebook puts them."""
    name = checkpoint_name(method, rank)
    if method in DEFAULT_LORA_TARGETS and lora_targets not in (None, DEFAULT_LORA_TARGETS[method]):
        name += f"-{lora_targets}"
    return name


def train_method(profile: Profile, method: str, lora_targets: str | None = None) -> TrainingRun:
    """Train `method` on the profile's data exactly as its notebook does; returns the run (reused when finished)."""
    tokenizer = load_tokenizer(profile)
    data = load_profile_data(profile)
    train_set = tokenize_for_training(data["train"], tokenizer, profile)
    validation_set = tokenize_for_training(data["validation"], tokenizer, profile)
    model, learning_rate = model_for_method(profile, method, tokenizer, lora_targets)
    overrides = {}
    if method == "qlora":
        from utils.quantization import qlora_training_overrides

        overrides = qlora_training_overrides(profile)
    return train(model, tokenizer, profile, run_name(method, profile.lora_rank, lora_targets), train_set,
                 validation_set, learning_rate, **overrides)
