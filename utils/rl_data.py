"""Data for the reinforcement-learning notebooks, both written for this course.

- `data/detox/`: heated support-desk dialogues with a neutral reference summary and a
  careless one that repeats the insults (for measuring and lowering toxicity).
- `data/preferences/rankings.jsonl`: dialogues with 3-4 summaries ranked best first,
  turned into chosen/rejected pairs for a reward model.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from datasets import Dataset

from utils.data import DataError, read_numbered_rows
from utils.plumbing.files import DATA_DIR

DETOX_FOLDER = DATA_DIR / "detox"
DETOX_SPLITS = ("train", "test")
DETOX_FIELDS = ("id", "dialogue", "summary", "topic", "careless_summary")

RANKINGS_FILE = DATA_DIR / "preferences" / "rankings.jsonl"
RANKING_SPLITS = ("train", "test")
RANKING_FIELDS = ("id", "split", "prompt", "summaries")

# The columns TRL's RewardTrainer reads: "preference" data with an explicit prompt.
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def _checked_rows(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """Rows of a .jsonl file; DataError naming the file, line and row id of the first bad row."""
    rows, problems = read_numbered_rows(path)
    if problems:
        line, what, fix = problems[0]
        raise DataError(f"{f'{path}:{line}' if line else path}: {what}. Fix: {fix}.")
    for line, row in rows:
        where = f"{path}:{line} (id {row.get('id', '?')!r})"
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}; every row needs {', '.join(fields)}.")
        for field in fields:
            value = row[field]
            if field == "summaries":
                if not isinstance(value, list) or len(value) < 2:
                    raise DataError(f"{where}: 'summaries' must be a list of at least 2 summaries, best first.")
                if not all(isinstance(s, str) and s.strip() for s in value):
                    raise DataError(f"{where}: every entry of 'summaries' must be a non-empty string.")
            elif not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: field {field!r} must be a non-empty string.")
    return [row for _, row in rows]


def load_detox(split: str = "train") -> list[dict]:
    """Rows of data/detox/<split>.jsonl: id, dialogue, summary, topic, careless_summary."""
    if split not in DETOX_SPLITS:
        raise ValueError(f"Unknown detox split {split!r}; use one of {', '.join(DETOX_SPLITS)}.")
    return _checked_rows(DETOX_FOLDER / f"{split}.jsonl", DETOX_FIELDS)


def load_rankings(split: str | None = None) -> list[dict]:
    """Ranked summaries (id, split, prompt, summaries best first); one split, or all rows for None."""
    if split is not None and split not in RANKING_SPLITS:
        raise ValueError(f"Unknown rankings split {split!r}; use one of {', '.join(RANKING_SPLITS)} or None.")
    rows = _checked_rows(RANKINGS_FILE, RANKING_FIELDS)
    for row in rows:
        if row["split"] not in RANKING_SPLITS:
            raise DataError(f"{RANKINGS_FILE} (id {row['id']!r}): split must be one of {', '.join(RANKING_SPLITS)}.")
    return [row for row in rows if split is None or row["split"] == split]


def ranking_to_pairs(prompt: str, ranked: list[str]) -> list[dict]:
    """All k*(k-1)/2 pairs of a ranking (best first): the higher-ranked summary is `chosen`.

    >>> [(p["chosen"], p["rejected"]) for p in ranking_to_pairs("dialogue", ["A", "B", "C"])]
    [('A', 'B'), ('A', 'C'), ('B', 'C')]
    """
    return [{"prompt": prompt, "chosen": better, "rejected": worse} for better, worse in combinations(ranked, 2)]


def preference_pairs(split: str = "train") -> Dataset:
    """Chosen/rejected pairs of one rankings split, in TRL's preference format with an explicit prompt.

    Columns `prompt` (the dialogue), `chosen` and `rejected` (summaries). TRL's
    RewardTrainer accepts this dataset as is; `utils.reward_model` tokenizes the
    (dialogue, summary) pairs itself so that training and scoring encode text the same way.
    """
    pairs = [pair for row in load_rankings(split) for pair in ranking_to_pairs(row["prompt"], row["summaries"])]
    return Dataset.from_dict({column: [pair[column] for pair in pairs] for column in PAIR_COLUMNS})
