"""Dialogue/summary data: one loader for the Hub, the bundled sample and your own files,
and tokenization for both model families."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from utils.adapters import has_soft_prompt
from utils.families import IGNORE_INDEX, inputs_and_labels, training_padding_side
from utils.plumbing.files import DATA_DIR
from utils.plumbing.hub import HubRepo, hub_or_cache
from utils.profiles import BUNDLED_DATA, Profile
from utils.prompts import DEFAULT_TEMPLATE, encode, instruction, model_input

SPLITS = ("train", "validation", "test")
COLUMNS = ("id", "dialogue", "summary", "topic", "references")
BUNDLED_FOLDER = DATA_DIR / "dialogsum_sample"


class DataError(ValueError):
    """The data the user pointed at cannot be read as dialogue/summary pairs."""


# --- reading ------------------------------------------------------------------------------


Problem = tuple[int | None, str, str]  # (line number or None for the whole file, what, how to fix)


def read_numbered_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """(line number, row) pairs of a .jsonl or .csv file, and the problems that stopped a row or the file."""
    path = Path(path)
    if not path.exists():
        return [], [(None, "no such file", "check the path")]
    if path.suffix not in (".jsonl", ".csv"):
        return [], [(None, f"unsupported file type {path.suffix or '(none)'!r}", "use a .jsonl or .csv file")]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return [], [(None, f"cannot read the file ({error.__class__.__name__})", "save it as UTF-8 text")]
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # keeps line breaks inside quoted fields
        return [(reader.line_num, row) for row in reader], []
    rows, problems = [], []
    # split on "\n" only: JSON text may hold U+2028 and other characters splitlines() breaks on
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append((number, f"invalid JSON ({error.msg})", "write one JSON object per line"))
            continue
        if not isinstance(row, dict):
            problems.append((number, "not a JSON object", 'write {"dialogue": ..., "summary": ...} on each line'))
            continue
        rows.append((number, row))
    return rows, problems


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl or .csv file as dicts; DataError naming file:line at the first bad line."""
    rows, problems = read_numbered_rows(path)
    if problems:
        line, what, fix = problems[0]
        where = f"{path}:{line}" if line else str(path)
        raise DataError(f"{where}: {what}. Fix: {fix} (`python -m utils check-data {path}` lists every problem).")
    return [row for _, row in rows]


def normalize_rows(
    rows: list[dict],
    split: str,
    input_column: str = "dialogue",
    target_column: str = "summary",
    merge_repeated_dialogues: bool = False,
) -> dict[str, list]:
    """Map rows of any supported layout to the course's columns.

    DialogSum's test split has `summary1..3`; all references of a dialogue end up in
    `references`, the first one in `summary`. The Hub copy instead repeats each test
    dialogue once per reference: `merge_repeated_dialogues` folds those rows together.
    """
    merged: dict[str, dict] = {}
    for index, row in enumerate(rows):
        references = [row[target_column]] if row.get(target_column) else []
        references += [row[k] for k in ("summary1", "summary2", "summary3") if row.get(k)]
        dialogue = row.get(input_column) or ""
        key = dialogue if merge_repeated_dialogues and dialogue else index
        if key in merged:
            merged[key]["references"] += [r for r in references if r not in merged[key]["references"]]
            continue
        merged[key] = {
            "id": str(row.get("id") or row.get("fname") or f"{split}_{index}"),
            "dialogue": dialogue,
            "summary": references[0] if references else "",
            "topic": row.get("topic") or row.get("topic1") or "",
            "references": references,
        }
    return {column: [r[column] for r in merged.values()] for column in COLUMNS}


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in (".jsonl", ".csv"):
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    return None


def load_dialogues(
    source: str = BUNDLED_DATA,
    input_column: str = "dialogue",
    target_column: str = "summary",
    seed: int = 42,
) -> DatasetDict:
    """Train/validation/test splits with columns id, dialogue, summary, topic, references.

    `source` is "bundled" (data/dialogsum_sample), "hub:<dataset id>", a folder holding
    train/validation/test .jsonl or .csv files, or one .jsonl/.csv file (split 80/10/10).
    """
    if source.startswith("hub:"):
        return _load_hub(source.removeprefix("hub:"))
    folder = BUNDLED_FOLDER if source == BUNDLED_DATA else Path(source).expanduser()
    if folder.is_dir():
        splits = {}
        for split in SPLITS:
            path = _split_file(folder, split)
            if path is None:
                raise DataError(f"{folder}: no {split}.jsonl or {split}.csv")
            rows = read_rows(path)
            splits[split] = Dataset.from_dict(normalize_rows(rows, split, input_column, target_column))
        return DatasetDict(splits)
    if folder.is_file():
        rows = read_rows(folder)
        whole = Dataset.from_dict(normalize_rows(rows, "train", input_column, target_column))
        if len(whole) < 10:
            raise DataError(f"{folder}: {len(whole)} rows; at least 10 are needed to split train/validation/test")
        first = whole.train_test_split(test_size=0.2, seed=seed)
        rest = first["test"].train_test_split(test_size=0.5, seed=seed)
        return DatasetDict(train=first["train"], validation=rest["train"], test=rest["test"])
    raise DataError(f"{source}: no such file or folder (expected 'bundled', 'hub:<id>', a folder or a file)")


def _load_hub(dataset_id: str) -> DatasetDict:
    from datasets import load_dataset

    # Its Hub id, or its folder in the Hugging Face cache when the Hub is out of reach: `datasets`
    # reads the folder's CSV splits itself (in offline mode it would want a cache of its own).
    raw = load_dataset(hub_or_cache(HubRepo(dataset_id, "dataset", "dataset")))
    return DatasetDict(
        {
            split: Dataset.from_dict(normalize_rows(list(raw[split]), split, merge_repeated_dialogues=True))
            for split in SPLITS
            if split in raw
        }
    )


def load_profile_data(profile: Profile) -> DatasetDict:
    """The profile's data, each split cut to the profile's example count."""
    data = load_dialogues(profile.data, seed=profile.seed)
    limits = {
        "train": profile.train_examples,
        "validation": profile.validation_examples,
        "test": profile.test_examples,
    }
    return DatasetDict(
        {
            split: data[split].select(range(min(limit, len(data[split])))) if limit else data[split]
            for split, limit in limits.items()
        }
    )


# --- tokenization ---------------------------------------------------------------------------


ELLIPSIS = " ..."


def fit_dialogue(tokenizer: PreTrainedTokenizerBase, dialogue: str, max_tokens: int) -> str:
    """Cut a dialogue to at most `max_tokens` tokens (the instruction around it is never cut)."""
    ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return dialogue
    keep = max_tokens - len(tokenizer(ELLIPSIS, add_special_tokens=False)["input_ids"])
    return tokenizer.decode(ids[: max(keep, 1)], skip_special_tokens=True).rstrip() + ELLIPSIS


def dialogue_budget(tokenizer: PreTrainedTokenizerBase, profile: Profile, template: str,
                    examples: Sequence[tuple[str, str]] = (), max_tokens: int | None = None) -> int:
    """Tokens left for the dialogue once the template, the worked examples and the chat format take their share."""
    empty = model_input(tokenizer, instruction("", template, examples), profile.is_encoder_decoder)
    overhead = len(encode(tokenizer, empty, profile.is_encoder_decoder)["input_ids"])
    return max(8, (max_tokens or profile.max_source_tokens) - overhead)


def fit_prompt(tokenizer: PreTrainedTokenizerBase, profile: Profile, dialogue: str, template: str = DEFAULT_TEMPLATE,
               examples: Sequence[tuple[str, str]] = (), max_tokens: int | None = None) -> str:
    """The model-ready prompt for one dialogue, its dialogue cut until the whole fits `max_tokens`.

    `max_tokens` defaults to the profile's source length; few-shot prompts pass the model's
    context window. Worked `examples` (dialogue, summary) stay whole; when they alone leave no
    room for the dialogue, the last ones are left out. Tokens can merge across the edges of the
    dialogue, so the first cut may be a token or two too long: cut a little more until it fits.
    """
    limit = max_tokens or profile.max_source_tokens
    examples = list(examples)
    while examples and dialogue_budget(tokenizer, profile, template, examples, limit) <= 8:
        examples.pop()
    budget = dialogue_budget(tokenizer, profile, template, examples, limit)
    while True:
        prompt = model_input(tokenizer, instruction(fit_dialogue(tokenizer, dialogue, budget), template, examples),
                             profile.is_encoder_decoder)
        length = len(encode(tokenizer, prompt, profile.is_encoder_decoder)["input_ids"])
        if length <= limit or budget <= 8:
            return prompt
        budget -= length - limit


def prompts_for(
    dialogues: list[str],
    tokenizer: PreTrainedTokenizerBase,
    profile: Profile,
    template: str = DEFAULT_TEMPLATE,
) -> list[str]:
    """Model-ready prompt strings for dialogues (cut to fit the profile's source length)."""
    return [fit_prompt(tokenizer, profile, dialogue, template) for dialogue in dialogues]


def tokenize_pairs(
    prompts: list[str], targets: list[str], tokenizer: PreTrainedTokenizerBase, profile: Profile
) -> Dataset:
    """input_ids / attention_mask / labels for model-ready prompts and the texts to learn after them.

    How the two families lay them out: utils.families.inputs_and_labels.
    """
    inputs = encode(tokenizer, prompts, profile.is_encoder_decoder)["input_ids"]
    input_ids, labels = inputs_and_labels(tokenizer, inputs, targets, profile.max_target_tokens,
                                          profile.is_encoder_decoder)
    return Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}
    )


def tokenize_for_training(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    profile: Profile,
    template: str = DEFAULT_TEMPLATE,
) -> Dataset:
    """Instruction-tuning examples: each dialogue in the template, its summary as the target."""
    prompts = prompts_for(list(dataset["dialogue"]), tokenizer, profile, template)
    return tokenize_pairs(prompts, list(dataset["summary"]), tokenizer, profile)


class TrainingCollator:
    """Pads a batch of training examples to its longest (dynamic padding); labels with IGNORE_INDEX.

    Inputs and labels are padded each to its own longest, on `padding_side`: decoder-only examples
    on the left, so every answer ends at the last column and the LM head is only needed over the
    last ones (utils.families.answer_loss, training_padding_side).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, padding_side: str):
        self.pad_token_id = tokenizer.pad_token_id
        self.left = padding_side == "left"

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(row) for row in rows)
        return torch.tensor([[value] * (width - len(row)) + row if self.left else row + [value] * (width - len(row))
                             for row in rows])

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = [list(feature["input_ids"]) for feature in features]
        return {
            "input_ids": self._pad(input_ids, self.pad_token_id),
            "attention_mask": self._pad([[1] * len(ids) for ids in input_ids], 0),
            "labels": self._pad([list(feature["labels"]) for feature in features], IGNORE_INDEX),
        }


def training_collator(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> TrainingCollator:
    """The collator of `model`'s training batches, padded on the side utils.families.training_padding_side says."""
    return TrainingCollator(tokenizer, training_padding_side(model.config.is_encoder_decoder, has_soft_prompt(model)))


def batches(tokenized: Dataset, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, batch_size: int):
    """`model`'s padded batches of a tokenized dataset, in order (for perplexity and other loss measurements)."""
    from torch.utils.data import DataLoader

    return DataLoader(tokenized, batch_size=batch_size, collate_fn=training_collator(tokenizer, model))
