"""The RL datasets load with their fields, keep test apart from train, and rankings become TRL pairs."""

import pytest

from utils import rl_data
from utils.data import DataError
from utils.rl_data import (
    DETOX_FIELDS,
    load_detox,
    load_rankings,
    preference_pairs,
    ranking_to_pairs,
)

INSULTS = ("idiot", "stupid", "moron", "crap", "damn", "pathetic", "shut up", "bloody")


@pytest.mark.parametrize("split, size", [("train", 80), ("test", 40)])
def test_detox_splits_load_with_every_field(split, size):
    rows = load_detox(split)
    assert len(rows) == size
    for row in rows:
        assert set(DETOX_FIELDS) <= set(row)
        assert row["dialogue"].startswith("#Person")
        assert "#Person" in row["summary"] and "#Person" in row["careless_summary"]


def test_detox_test_split_is_held_out():
    train, test = load_detox("train"), load_detox("test")
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert not {r["dialogue"] for r in train} & {r["dialogue"] for r in test}


def test_reference_summaries_leave_the_insults_out_and_careless_ones_repeat_them():
    rows = load_detox("train") + load_detox("test")
    assert not [r["id"] for r in rows if any(word in r["summary"].lower() for word in INSULTS)]
    repeating = [r for r in rows if any(word in r["careless_summary"].lower() for word in INSULTS)]
    assert len(repeating) >= 0.9 * len(rows)


def test_a_row_without_a_field_is_reported_with_its_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text('{"id": "a", "dialogue": "#Person1#: Hi.", "summary": "s", "topic": "t"}\n')
    monkeypatch.setattr(rl_data, "DETOX_FOLDER", tmp_path)
    with pytest.raises(DataError, match=r"train.jsonl:1 \(id 'a'\).*careless_summary"):
        load_detox("train")


def test_rankings_have_a_train_and_a_test_split_of_ranked_summaries():
    train, test = load_rankings("train"), load_rankings("test")
    assert len(train) >= 60 and len(test) >= 15
    assert len(load_rankings()) == len(train) + len(test)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(len(r["summaries"]) in (3, 4) for r in train + test)


def test_a_ranking_of_three_gives_three_pairs_with_the_better_summary_chosen():
    pairs = ranking_to_pairs("#Person1#: Hi.", ["best", "middle", "worst"])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "middle"), ("best", "worst"), ("middle", "worst")]
    assert all(p["prompt"] == "#Person1#: Hi." for p in pairs)
    assert len(ranking_to_pairs("d", ["1", "2", "3", "4"])) == 6  # k * (k - 1) / 2


def test_preference_pairs_are_in_trl_preference_format_with_every_pair_of_each_ranking():
    pairs = preference_pairs("test")
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    expected = sum(len(r["summaries"]) * (len(r["summaries"]) - 1) // 2 for r in load_rankings("test"))
    assert len(pairs) == expected
    first = load_rankings("test")[0]
    assert pairs[0] == {"prompt": first["prompt"], "chosen": first["summaries"][0], "rejected": first["summaries"][1]}
