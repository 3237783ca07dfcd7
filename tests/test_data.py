"""Loading dialogue/summary data from every supported layout, and tokenizing it for both families."""

import csv
import json

import pytest

from utils.data import (
    COLUMNS,
    IGNORE_INDEX,
    DataError,
    fit_dialogue,
    load_dialogues,
    load_profile_data,
    normalize_rows,
    prompts_for,
    tokenize_for_training,
    training_collator,
)
from utils.profiles import get_profile
from utils.prompts import encode, instruction

LONG_DIALOGUE = "\n".join(
    f"#Person{1 + turn % 2}#: I would like to talk about the weather in town number {turn} today."
    for turn in range(300)
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def dialogue(n):
    return f"#Person1#: Question number {n}?\n#Person2#: Answer number {n}."


# --- the bundled sample -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    return load_dialogues("bundled")


def test_bundled_data_has_three_splits_with_the_course_columns(bundled):
    assert set(bundled) == {"train", "validation", "test"}
    for split in bundled.values():
        assert split.column_names == list(COLUMNS)


def test_bundled_data_has_enough_rows(bundled):
    assert len(bundled["train"]) >= 150
    assert len(bundled["validation"]) >= 30
    assert len(bundled["test"]) >= 30


def test_bundled_ids_are_unique_across_splits(bundled):
    ids = [i for split in bundled.values() for i in split["id"]]

    assert len(ids) == len(set(ids))


def test_bundled_dialogues_are_in_dialogsum_format(bundled):
    for split in bundled.values():
        for text, summary, references in zip(split["dialogue"], split["summary"], split["references"]):
            assert text.startswith("#Person1#:")
            assert "\n#Person2#:" in text
            assert summary and references == [summary]


# --- other layouts ----------------------------------------------------------------------


def test_a_folder_in_dialogsum_layout_gives_three_references_per_test_row(tmp_path):
    for split in ("train", "validation"):
        write_jsonl(
            tmp_path / f"{split}.jsonl",
            [{"fname": f"{split}_{n}", "dialogue": dialogue(n), "summary": f"S{n}.", "topic": "quiz"} for n in range(3)],
        )
    write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"fname": f"test_{n}", "dialogue": dialogue(n), "summary1": f"A{n}.", "summary2": f"B{n}.",
             "summary3": f"C{n}.", "topic1": "quiz", "topic2": "questions", "topic3": "talk"}
            for n in range(2)
        ],
    )

    data = load_dialogues(str(tmp_path))

    assert data["train"]["id"] == ["train_0", "train_1", "train_2"]
    assert data["train"]["references"] == [["S0."], ["S1."], ["S2."]]
    assert data["test"]["id"] == ["test_0", "test_1"]
    assert data["test"]["references"] == [["A0.", "B0.", "C0."], ["A1.", "B1.", "C1."]]
    assert data["test"]["summary"] == ["A0.", "A1."]
    assert data["test"]["topic"] == ["quiz", "quiz"]


def test_hub_style_test_rows_repeating_a_dialogue_merge_into_one_row():
    rows = [
        {"id": "test_0_1", "dialogue": dialogue(0), "summary": "First.", "topic": "quiz"},
        {"id": "test_0_2", "dialogue": dialogue(0), "summary": "Second.", "topic": "quiz"},
        {"id": "test_0_3", "dialogue": dialogue(0), "summary": "Third.", "topic": "quiz"},
        {"id": "test_1_1", "dialogue": dialogue(1), "summary": "Other.", "topic": "quiz"},
    ]

    columns = normalize_rows(rows, "test", merge_repeated_dialogues=True)

    assert columns["id"] == ["test_0_1", "test_1_1"]
    assert columns["references"] == [["First.", "Second.", "Third."], ["Other."]]
    assert columns["summary"] == ["First.", "Other."]


def test_repeated_dialogues_in_your_own_file_stay_separate_rows():
    rows = [
        {"id": "a", "dialogue": dialogue(0), "summary": "First."},
        {"id": "b", "dialogue": dialogue(0), "summary": "Second."},
    ]

    columns = normalize_rows(rows, "train")

    assert columns["id"] == ["a", "b"]
    assert columns["references"] == [["First."], ["Second."]]


def test_rows_without_an_id_get_one_from_their_split_and_position():
    columns = normalize_rows([{"dialogue": dialogue(0), "summary": "S."}], "validation")

    assert columns["id"] == ["validation_0"]


def test_a_single_csv_with_custom_columns_loads_and_splits_80_10_10(tmp_path):
    path = write_csv(
        tmp_path / "mine.csv", ["conversation", "gist"], [[f"#Person1#: Line {n}.", f"Gist {n}."] for n in range(20)]
    )

    data = load_dialogues(str(path), input_column="conversation", target_column="gist")

    assert [len(data[s]) for s in ("train", "validation", "test")] == [16, 2, 2]
    all_rows = [(d, s) for split in data.values() for d, s in zip(split["dialogue"], split["summary"])]
    assert sorted(all_rows) == sorted((f"#Person1#: Line {n}.", f"Gist {n}.") for n in range(20))


def test_the_split_of_a_single_file_is_the_same_every_time(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"dialogue": dialogue(n), "summary": f"S{n}."} for n in range(30)])

    first, second = load_dialogues(str(path)), load_dialogues(str(path))

    assert first["test"]["dialogue"] == second["test"]["dialogue"]


def test_a_single_file_with_too_few_rows_raises(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"dialogue": dialogue(n), "summary": "S."} for n in range(3)])

    with pytest.raises(DataError, match="at least 10"):
        load_dialogues(str(path))


def test_a_csv_keeps_the_line_breaks_inside_a_quoted_dialogue(tmp_path):
    rows = [[dialogue(n), f"S{n}."] for n in range(10)]
    path = write_csv(tmp_path / "mine.csv", ["dialogue", "summary"], rows)

    data = load_dialogues(str(path))

    loaded = sorted(d for split in data.values() for d in split["dialogue"])
    assert loaded == sorted(dialogue(n) for n in range(10))


def test_a_jsonl_row_with_a_unicode_line_separator_in_its_text_loads(tmp_path):
    rows = [{"dialogue": dialogue(n) + "\u2028(copied from a web page)", "summary": f"S{n}."} for n in range(10)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    data = load_dialogues(str(path))

    assert sum(len(split) for split in data.values()) == 10


def test_a_bad_jsonl_line_raises_data_error_naming_file_and_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"dialogue": "#Person1#: Hi.", "summary": "Hi."}\n{"dialogue": oops}\n', encoding="utf-8")

    with pytest.raises(DataError) as raised:
        load_dialogues(str(path))

    assert f"{path}:2" in str(raised.value)
    assert "check-data" in str(raised.value)


def test_a_folder_without_a_test_split_raises(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"dialogue": dialogue(0), "summary": "S."}])
    write_jsonl(tmp_path / "validation.jsonl", [{"dialogue": dialogue(0), "summary": "S."}])

    with pytest.raises(DataError, match="test"):
        load_dialogues(str(tmp_path))


def test_a_missing_source_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dialogues(str(tmp_path / "nowhere"))


def test_profile_data_is_cut_to_the_profile_sizes(tiny_profile):
    data = load_profile_data(tiny_profile)

    assert len(data["train"]) == tiny_profile.train_examples
    assert len(data["validation"]) == tiny_profile.validation_examples
    assert len(data["test"]) == tiny_profile.test_examples


# --- tokenization ---------------------------------------------------------------------


def four_examples(profile_name):
    """A profile whose target length fits the bundled summaries, its tokenizer and four training rows."""
    from dataclasses import replace

    from utils.models import load_tokenizer
    from utils.profiles import get_profile

    profile = replace(get_profile(profile_name), max_target_tokens=128)  # tiny profiles cut summaries at 48
    return profile, load_tokenizer(profile), load_dialogues("bundled")["train"].select(range(4))


def test_encoder_decoder_labels_are_the_summary_tokens_ending_with_eos():
    profile, tokenizer, examples = four_examples("tiny")

    tokenized = tokenize_for_training(examples, tokenizer, profile)

    for row, summary in zip(tokenized, examples["summary"]):
        assert row["labels"][-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in row["labels"][:-1]
        assert tokenizer.decode(row["labels"], skip_special_tokens=True) == summary
        assert row["input_ids"][-1] == tokenizer.eos_token_id
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_decoder_only_labels_mask_the_prompt_and_keep_the_answer():
    profile, tokenizer, examples = four_examples("tiny-causal")
    prompts = prompts_for(examples["dialogue"], tokenizer, profile)

    tokenized = tokenize_for_training(examples, tokenizer, profile)

    for row, prompt, summary in zip(tokenized, prompts, examples["summary"]):
        prompt_length = len(encode(tokenizer, prompt, False)["input_ids"])
        ids, labels = row["input_ids"], row["labels"]
        assert len(labels) == len(ids) == len(row["attention_mask"])
        assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
        assert labels[prompt_length:] == ids[prompt_length:]
        assert labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(labels[prompt_length:-1]) == summary
        assert tokenizer.decode(ids[:prompt_length]) == prompt


def test_long_summaries_are_cut_to_max_target_tokens(tiny_model_and_tokenizer, tiny_profile):
    _, tokenizer = tiny_model_and_tokenizer
    from datasets import Dataset

    rows = Dataset.from_dict({"dialogue": [dialogue(0)], "summary": [" ".join(["word"] * 200)]})

    labels = tokenize_for_training(rows, tokenizer, tiny_profile)[0]["labels"]

    assert len([t for t in labels if t != IGNORE_INDEX]) == tiny_profile.max_target_tokens
    assert labels[-1] == tokenizer.eos_token_id


def test_a_long_dialogue_is_cut_and_the_prompt_still_ends_with_the_instruction(tiny_model_and_tokenizer, tiny_profile):
    _, tokenizer = tiny_model_and_tokenizer

    (prompt,) = prompts_for([LONG_DIALOGUE], tokenizer, tiny_profile, template="classic")

    assert "Summarize the following conversation.\n\n#Person1#: I would like to talk" in prompt
    assert "number 299" not in prompt  # the end of the dialogue was cut...
    user_turn = prompt.split("<|im_end|>")[0]  # (decoder-only: the chat format comes after it)
    assert user_turn.endswith(" ...\n\nSummary:")  # ...but not the instruction after it
    length = len(encode(tokenizer, prompt, tiny_profile.is_encoder_decoder)["input_ids"])
    assert length < tiny_profile.max_source_tokens + 10  # about the budget (exactly: see the next test)


def test_a_long_dialogue_keeps_the_instruction_for_every_template(tiny_model_and_tokenizer, tiny_profile):
    _, tokenizer = tiny_model_and_tokenizer

    (prompt,) = prompts_for([LONG_DIALOGUE], tokenizer, tiny_profile, template="flan_briefly")

    assert prompt.split("<|im_end|>")[0].endswith("Briefly summarize that dialogue.")


def test_a_cut_prompt_is_no_longer_than_max_source_tokens(tiny_model_and_tokenizer, tiny_profile):
    _, tokenizer = tiny_model_and_tokenizer

    (prompt,) = prompts_for([LONG_DIALOGUE], tokenizer, tiny_profile)

    assert len(encode(tokenizer, prompt, tiny_profile.is_encoder_decoder)["input_ids"]) <= tiny_profile.max_source_tokens


def test_fit_dialogue_leaves_a_short_dialogue_alone(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer

    assert fit_dialogue(tokenizer, dialogue(1), 100) == dialogue(1)


def test_fit_dialogue_keeps_the_start_of_a_long_dialogue(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer

    cut = fit_dialogue(tokenizer, LONG_DIALOGUE, 40)

    assert LONG_DIALOGUE.startswith(cut.removesuffix(" ..."))
    assert cut.endswith(" ...")
    assert len(cut) < len(LONG_DIALOGUE) / 10


def short_and_long_batch(profile):
    from datasets import Dataset

    from utils.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(profile)
    rows = Dataset.from_dict(
        {"dialogue": [dialogue(1), LONG_DIALOGUE[:600]], "summary": ["Short.", "A much longer summary " * 4]}
    )
    tokenized = tokenize_for_training(rows, tokenizer, profile)
    batch = training_collator(tokenizer, model)([tokenized[0], tokenized[1]])
    return tokenizer, tokenized, batch


def test_encoder_decoder_batches_are_padded_on_the_right_labels_with_ignore_index():
    tokenizer, tokenized, batch = short_and_long_batch(get_profile("tiny"))

    short_input, short_labels = len(tokenized[0]["input_ids"]), len(tokenized[0]["labels"])
    assert batch["input_ids"].shape[0] == 2
    assert batch["labels"][0, :short_labels].tolist() == tokenized[0]["labels"]
    assert (batch["labels"][0, short_labels:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, short_input:] == 0).all()
    assert (batch["input_ids"][0, short_input:] == tokenizer.pad_token_id).all()
    assert batch["labels"].shape[1] == max(len(r["labels"]) for r in tokenized)  # padded to the longest only


def test_decoder_only_batches_are_padded_on_the_left_so_every_answer_ends_at_the_last_column():
    tokenizer, tokenized, batch = short_and_long_batch(get_profile("tiny-causal"))

    padding = batch["input_ids"].shape[1] - len(tokenized[0]["input_ids"])
    assert padding > 0 and batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in tokenized)
    assert batch["input_ids"][0, padding:].tolist() == tokenized[0]["input_ids"]
    assert batch["labels"][0, padding:].tolist() == tokenized[0]["labels"]
    assert (batch["input_ids"][0, :padding] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, :padding] == IGNORE_INDEX).all() and (batch["attention_mask"][0, :padding] == 0).all()
    assert (batch["labels"][:, -1] != IGNORE_INDEX).all()  # both answers end at the last column


def test_instruction_is_the_same_for_training_and_prompts(tiny_model_and_tokenizer, tiny_profile):
    _, tokenizer = tiny_model_and_tokenizer

    (prompt,) = prompts_for([dialogue(3)], tokenizer, tiny_profile)

    assert instruction(dialogue(3)) in prompt


@pytest.mark.parametrize("name", ["tiny", "tiny-causal"])
def test_a_few_shot_prompt_is_cut_to_the_window_keeping_its_examples_whole(name):
    from utils.data import fit_prompt
    from utils.models import load_tokenizer
    from utils.prompts import encode

    profile = get_profile(name)
    tokenizer = load_tokenizer(profile)
    rows = load_dialogues("bundled")["train"]
    examples = [(rows[i]["dialogue"], rows[i]["summary"]) for i in range(2)]
    dialogue = rows[5]["dialogue"]
    length = lambda prompt: len(encode(tokenizer, prompt, profile.is_encoder_decoder)["input_ids"])
    uncut = fit_prompt(tokenizer, profile, dialogue, examples=examples, max_tokens=10_000)
    window = length(uncut) - 40

    prompt = fit_prompt(tokenizer, profile, dialogue, examples=examples, max_tokens=window)

    assert length(prompt) <= window < length(uncut)
    assert all(summary in prompt for _, summary in examples)
    assert "…" in prompt or "..." in prompt


def test_examples_that_fill_the_window_alone_are_left_out_from_the_last():
    from utils.data import fit_prompt
    from utils.models import load_tokenizer

    profile = get_profile("tiny")
    tokenizer = load_tokenizer(profile)
    rows = load_dialogues("bundled")["train"]
    examples = [(rows[i]["dialogue"], rows[i]["summary"]) for i in range(2)]
    one_example = len(tokenizer(fit_prompt(tokenizer, profile, "Hi.", examples=examples[:1], max_tokens=10_000))["input_ids"])

    prompt = fit_prompt(tokenizer, profile, rows[5]["dialogue"], examples=examples, max_tokens=one_example + 30)

    assert examples[0][1] in prompt and examples[1][1] not in prompt
