"""The forgetting probe (short answers to the benchmark's questions) and the multi-task mix."""

from dataclasses import replace

import pytest

from utils.data import read_rows, tokenize_for_training
from utils.forgetting import (
    PROBE_FILE,
    SECOND_TASK_TRAIN,
    MULTITASK_SHARE,
    ProbeResult,
    compare_probes,
    forgetting_checks,
    forgetting_record,
    in_words,
    judge,
    multitask_mix,
    names,
    second_task_training_set,
    short_answer_probe,
    train_for_forgetting,
    word_share,
)


def test_an_answer_is_right_when_it_names_the_gold_choice_and_no_other():
    choices = ["Paris", "Rome", "New York", "York"]

    assert judge("The capital of France is Paris.", choices, gold=0)
    assert not judge("Paris or Rome.", choices, gold=0)
    assert not judge("#Person1# asks about a trip.", choices, gold=0)
    assert names("it is in new york!", "New York") and not names("Yorkshire", "York")


def test_answers_in_words_tell_a_wrong_answer_or_a_summary_from_a_collapsed_model():
    assert in_words("Paris.") and in_words("#Person1# asks #Person2# about the trip.")
    assert not in_words("#222222222222222") and not in_words("#22#, #22#, #22#") and not in_words("  ")

    assert word_share(["Sublimation.", "################", "About thirty-seven degrees.", "!!"]) == 0.5


def test_a_forgetting_record_holds_the_interval_and_the_perplexity_before_and_after(tiny_profile):
    before = ProbeResult(["a", "b", "c", "d"], ["?"] * 4, ["x"] * 4, [True, True, False, False])
    after = ProbeResult(["a", "b", "c", "d"], ["?"] * 4, ["x"] * 4, [False, False, False, True])
    change = compare_probes(before, after)

    full = forgetting_record(change, 9.0, 8.5, tiny_profile, "full")
    mixed = forgetting_record(change, 9.0, 8.7, tiny_profile, "multitask")
    lora = forgetting_record(change, 9.0, 6.1, tiny_profile, "lora")

    assert (full["second_task_before"], full["second_task_after"]) == (0.5, 0.25)
    assert full["second_task_ci_low"] < -0.25 < full["second_task_ci_high"]
    assert (full["perplexity_before"], full["perplexity_after"], full["perplexity"]) == (9.0, 8.5, 8.5)
    assert full["variant"] == "forgetting" and full["learning_rate"] == tiny_profile.forgetting_learning_rate
    assert mixed["second_task_share"] == MULTITASK_SHARE and "second_task_share" not in full
    assert lora["learning_rate"] == tiny_profile.forgetting_lora_learning_rate
    with pytest.raises(ValueError, match="method must be one of"):
        forgetting_record(change, 9.0, 8.5, tiny_profile, "adapters")


def test_the_checks_say_which_part_of_the_forgetting_story_held():
    right = [True] * 10 + [False] * 10
    before = ProbeResult([str(i) for i in range(20)], ["?"] * 20, ["x"] * 20, right)
    pushed = compare_probes(before, replace(before, right=[False] * 20))  # every right answer broken
    recovered = compare_probes(before, replace(before, right=[True] * 9 + [False] * 11))  # one broken
    half = compare_probes(before, replace(before, right=[True] * 4 + [False] * 16))  # six broken

    held = forgetting_checks(pushed, recovered, perplexity_before=9.0, pushed_perplexity=8.0,
                             pushed_answers=["#Person1# asks about the trip."] * 20)
    failed = forgetting_checks(pushed, half, perplexity_before=9.0, pushed_perplexity=9.5,
                               pushed_answers=["#2222222222"] * 20)

    assert all(held.values())
    assert [name for name, ok in failed.items() if not ok] == [
        "the pushed run still summarizes: test perplexity no worse than the base model's",
        "the pushed run writes words: at least 90% of its answers",
        "multi-task recovered: its interval includes zero",
        "multi-task recovered: at least halfway back from the pushed run to the base model"]


def test_the_probe_and_the_second_tasks_training_share_no_question():
    probe = {row["question"].lower() for row in read_rows(PROBE_FILE)}
    training = [row["question"].lower() for row in read_rows(SECOND_TASK_TRAIN)]

    assert len(training) >= 64 and not probe & set(training)
    assert all(len(row["answer"].split()) <= 6 for row in read_rows(SECOND_TASK_TRAIN))


def test_the_mix_adds_the_share_of_second_task_examples_and_keeps_every_first_one(tiny_profile,
                                                                                   tiny_model_and_tokenizer):
    from utils.data import load_profile_data

    _, tokenizer = tiny_model_and_tokenizer
    summaries = tokenize_for_training(load_profile_data(tiny_profile)["train"], tokenizer, tiny_profile)
    second = second_task_training_set(tokenizer, tiny_profile)

    mixed = multitask_mix(summaries, second, share=0.25)

    assert len(mixed) == len(summaries) + round(len(summaries) / 3)
    rows = {tuple(ids) for ids in mixed["input_ids"]}
    assert {tuple(ids) for ids in summaries["input_ids"]} <= rows
    assert len(rows & {tuple(ids) for ids in second["input_ids"]}) == round(len(summaries) / 3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        multitask_mix(summaries, second, share=1.0)


def test_the_probe_judges_every_answer_of_a_model(tiny_profile, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer

    result = short_answer_probe(model, tokenizer, tiny_profile, limit=6)

    assert len(result.answers) == len(result.right) == 6
    assert result.accuracy == sum(result.right) / 6


def test_a_comparison_counts_fixed_and_broken_answers():
    before = ProbeResult(["a", "b", "c", "d"], ["?"] * 4, ["x"] * 4, [True, True, False, False])
    after = ProbeResult(["a", "b", "c", "d"], ["?"] * 4, ["x"] * 4, [True, False, True, False])

    change = compare_probes(before, after)

    assert (change.fixed, change.broken, change.difference) == (1, 1, 0.0)
    with pytest.raises(ValueError, match="same questions"):
        compare_probes(before, ProbeResult(["z"], ["?"], ["x"], [True]))


def test_forgetting_trainings_reuse_the_main_run_only_when_their_settings_are_the_main_ones(tiny_profile,
                                                                                           tiny_model_and_tokenizer):
    from utils.data import load_profile_data

    _, tokenizer = tiny_model_and_tokenizer
    data = load_profile_data(tiny_profile)
    summaries = tokenize_for_training(data["train"], tokenizer, tiny_profile)
    validation = tokenize_for_training(data["validation"], tokenizer, tiny_profile)

    main = train_for_forgetting("full", tokenizer, tiny_profile, summaries, validation, epochs=tiny_profile.epochs,
                                learning_rate=tiny_profile.full_learning_rate)
    pushed = train_for_forgetting("full", tokenizer, tiny_profile, summaries, validation)
    mixed = train_for_forgetting("multitask", tokenizer, tiny_profile, summaries, validation)

    assert main.output_dir.name == "full"
    assert pushed.output_dir.name == "forgetting-full-e1-lr0.002"  # the tiny profiles: one pass at 2e-3
    assert mixed.output_dir.name.startswith("forgetting-multitask-") and not mixed.reused
    lora = train_for_forgetting("lora", tokenizer, tiny_profile, summaries, validation)
    assert lora.output_dir.name == f"forgetting-lora-r{tiny_profile.lora_rank}-e1-lr0.002"  # forgetting_lora_learning_rate
    slow_lora = train_for_forgetting("lora", tokenizer, tiny_profile, summaries, validation, lora_learning_rate=1e-4)
    assert slow_lora.output_dir.name == f"forgetting-lora-r{tiny_profile.lora_rank}-e1-lr0.0001"
    main_adapter = train_for_forgetting("lora", tokenizer, tiny_profile, summaries, validation,
                                        epochs=tiny_profile.epochs, lora_learning_rate=tiny_profile.peft_learning_rate)
    assert main_adapter.output_dir.name == f"lora-r{tiny_profile.lora_rank}"  # notebook 03's section 3
    with pytest.raises(ValueError, match="method must be one of"):
        train_for_forgetting("adapters", tokenizer, tiny_profile, summaries, validation)


@pytest.mark.parametrize("name", ["colab", "gpu"])
def test_the_online_profiles_measure_forgetting_on_their_main_runs_which_notebooks_02_and_03_reuse(name):
    from utils.profiles import get_profile

    profile = get_profile(name)

    assert (profile.forgetting_epochs, profile.forgetting_learning_rate) == (profile.epochs, profile.full_learning_rate)
    assert profile.forgetting_lora_learning_rate == profile.peft_learning_rate
    assert (profile.forgetting_train_examples, profile.forgetting_batch_size) == (None, profile.batch_size)


def test_forgetting_trains_on_the_profiles_slice_at_its_batch_and_is_then_never_the_main_run(monkeypatch, tiny_profile,
                                                                                          tiny_model_and_tokenizer):
    import utils.forgetting
    from utils.data import load_profile_data

    _, tokenizer = tiny_model_and_tokenizer
    summaries = tokenize_for_training(load_profile_data(tiny_profile)["train"], tokenizer, tiny_profile)
    calls = []
    monkeypatch.setattr(utils.forgetting, "train", lambda model, tokenizer, profile, name, data, validation, *args, **kw:
                        calls.append((name, profile.batch_size, len(data), validation)))
    sliced = replace(tiny_profile, forgetting_train_examples=6, forgetting_batch_size=2)

    train_for_forgetting("full", tokenizer, sliced, summaries, summaries, epochs=sliced.epochs,
                         learning_rate=sliced.full_learning_rate)  # the main run's epochs and rate, not its data
    train_for_forgetting("multitask", tokenizer, sliced, summaries, summaries)
    train_for_forgetting("full", tokenizer, replace(sliced, forgetting_train_examples=None), summaries, summaries)

    assert calls[0] == ("forgetting-full-e1-lr0.001", 2, 6, None)
    assert calls[1][1:] == (2, 8, None)  # 6 summaries and 2 second-task examples: a quarter
    assert calls[2][1:3] == (2, len(summaries))
