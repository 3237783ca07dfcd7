"""ROUGE, BLEU and perplexity give the values their definitions say."""

import math
from dataclasses import replace

import pytest
import torch

from utils.data import batches, load_profile_data, tokenize_for_training, training_collator
from utils.evaluation import split_perplexity
from utils.metrics import ROUGE_TYPES, bleu, perplexity, rouge, rouge_details, rouge_per_example
from utils.models import inference_copy


def test_rouge_of_identical_texts_is_one_for_all_four():
    texts = ["#Person1# asks #Person2# to close the window.", "The meeting moves to Friday."]

    scores = rouge(texts, texts)

    assert set(scores) == set(ROUGE_TYPES)
    assert all(value == pytest.approx(1.0) for value in scores.values())


def test_rouge_of_disjoint_texts_is_zero():
    scores = rouge(["apples and oranges"], ["trains leave tomorrow"])

    assert all(value == 0.0 for value in scores.values())


def test_rouge_worked_example_matches_hand_computed_values():
    # prediction: the cat sat on the mat    (6 words)
    # reference:  the cat is  on the mat    (6 words)
    # unigrams in common: the x2, cat, on, mat = 5     -> P = R = 5/6
    # bigrams: prediction {the cat, cat sat, sat on, on the, the mat}
    #          reference  {the cat, cat is,  is on,  on the, the mat} -> 3 in common of 5 -> P = R = 3/5
    # longest common subsequence: the cat on the mat = 5 words -> P = R = 5/6
    details = rouge_details("the cat sat on the mat", "the cat is on the mat")

    assert details["rouge1"]["precision"] == pytest.approx(5 / 6)
    assert details["rouge1"]["recall"] == pytest.approx(5 / 6)
    assert details["rouge1"]["f1"] == pytest.approx(5 / 6)
    assert details["rouge2"]["f1"] == pytest.approx(3 / 5)
    assert details["rougeL"]["f1"] == pytest.approx(5 / 6)
    assert rouge(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(
        {"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6, "rougeLsum": 5 / 6}
    )


def test_rouge_precision_is_about_the_prediction_and_recall_about_the_reference():
    # prediction: the cat sat on the mat          (6 words, 5 bigrams)
    # reference:  the black cat is on the mat     (7 words, 6 bigrams)
    # unigrams in common: the x2, cat, on, mat = 5  -> P = 5/6, R = 5/7, F = 2PR/(P+R) = 10/13
    # bigrams in common: on the, the mat = 2        -> P = 2/5, R = 2/6, F = 4/11
    details = rouge_details("the cat sat on the mat", "the black cat is on the mat")

    assert details["rouge1"] == pytest.approx({"precision": 5 / 6, "recall": 5 / 7, "f1": 10 / 13})
    assert details["rouge2"] == pytest.approx({"precision": 2 / 5, "recall": 2 / 6, "f1": 4 / 11})


def test_rouge_stems_and_ignores_case_and_punctuation():
    assert rouge(["The Dogs were RUNNING!"], ["the dog was running"])["rouge1"] == pytest.approx(0.75)


def test_rouge_is_the_mean_over_examples():
    scores = rouge(["the cat sat", "apples"], ["the cat sat", "trains"])

    assert scores["rouge1"] == pytest.approx(0.5)


def test_rouge_with_several_references_scores_against_the_best_one():
    prediction = "the cat sat on the mat"
    references = ["a dog ran in the park", "the cat sat on the mat", "the cat is on the mat"]

    assert rouge([prediction], [references])["rouge1"] == pytest.approx(1.0)
    assert rouge([prediction], [references[::-1]])["rouge1"] == pytest.approx(1.0)  # order does not matter
    single = [rouge([prediction], [r])["rouge2"] for r in references]
    assert rouge([prediction], [references])["rouge2"] == pytest.approx(max(single))


def test_rouge_per_example_gives_one_score_per_prediction():
    per_example = rouge_per_example(["the cat sat", "apples"], ["the cat sat", ["trains", "apples"]])

    assert [s["rouge1"] for s in per_example] == pytest.approx([1.0, 1.0])


def test_rouge_raises_when_predictions_and_references_differ_in_number():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])


def test_rouge_raises_without_predictions():
    with pytest.raises(ValueError):
        rouge([], [])


SENTENCES = ["the meeting moves to friday afternoon at three", "#Person1# buys two tickets to the concert tonight"]


def test_bleu_of_identical_texts_is_100():
    assert bleu(SENTENCES, SENTENCES) == pytest.approx(100.0)


def test_bleu_of_disjoint_texts_is_about_zero():
    assert bleu(SENTENCES, ["apples oranges pears bananas plums grapes", "red green blue yellow black white"]) < 1.0


def test_bleu_with_several_references_matches_against_any_of_them():
    wrong = ["apples oranges pears bananas plums grapes", "red green blue yellow black white"]

    with_right_one = bleu(SENTENCES, [[wrong[0], SENTENCES[0]], [SENTENCES[1]]])

    assert with_right_one == pytest.approx(100.0)
    assert bleu(SENTENCES, wrong) < with_right_one


def test_bleu_is_between_the_extremes_for_a_partial_match():
    score = bleu(["the meeting moves to friday morning at ten"], ["the meeting moves to friday afternoon at three"])

    assert 0.0 < score < 100.0


# --- perplexity ---------------------------------------------------------------------------


@pytest.fixture
def training_batches(tiny_profile, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    tokenized = tokenize_for_training(load_profile_data(tiny_profile)["train"].select(range(6)), tokenizer, tiny_profile)
    collate = training_collator(tokenizer, model)
    rows = [tokenized[i] for i in range(len(tokenized))]
    return collate(rows), [collate(rows[:2]), collate(rows[2:])]


def test_perplexity_of_a_tiny_model_is_finite_above_one_and_exp_of_the_loss(
    tiny_model_and_tokenizer, training_batches
):
    model, _ = tiny_model_and_tokenizer
    whole, _ = training_batches

    value = perplexity(model, [whole])

    model.eval()
    with torch.no_grad():
        loss = float(model(**whole).loss)
    assert math.isfinite(value) and value > 1.0
    assert value == pytest.approx(math.exp(loss), rel=1e-5)


def test_perplexity_over_several_batches_weights_each_token_equally(tiny_model_and_tokenizer, training_batches):
    model, _ = tiny_model_and_tokenizer
    whole, parts = training_batches

    assert perplexity(model, parts) == pytest.approx(perplexity(model, [whole]), rel=1e-4)


def test_perplexity_leaves_the_model_in_its_mode(tiny_model_and_tokenizer, training_batches):
    model, _ = tiny_model_and_tokenizer
    model.train()

    perplexity(model, training_batches[1])

    assert model.training


def test_a_split_s_perplexity_is_computed_in_the_precision_the_profile_trains_in(
        tiny_profile, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    test = load_profile_data(tiny_profile)["test"].select(range(4))
    bf16_profile = replace(tiny_profile, mixed_precision="bf16")
    tokenized = tokenize_for_training(test, tokenizer, tiny_profile)
    bf16_copy = inference_copy(model, "bfloat16")
    before = {name: p.clone() for name, p in model.named_parameters()}

    in_float32 = split_perplexity(model, tokenizer, replace(tiny_profile, mixed_precision="no"), test)
    in_bf16 = split_perplexity(model, tokenizer, bf16_profile, test)

    size = tiny_profile.eval_batch_size
    assert in_float32 == pytest.approx(perplexity(model, batches(tokenized, tokenizer, model, size)), rel=1e-5)
    assert in_bf16 == pytest.approx(perplexity(bf16_copy, batches(tokenized, tokenizer, bf16_copy, size)), rel=1e-6)
    assert in_bf16 != in_float32  # bf16 rounds: another network, a near figure (within 20% on random tiny models)
    assert in_bf16 == pytest.approx(in_float32, rel=0.2)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())  # float32, untouched


def test_several_references_score_as_the_best_one_or_as_their_mean():
    prediction = ["the cat sat on the mat"]
    references = [["the cat sat on the mat", "a dog ran in the park"]]

    best = rouge(prediction, references)
    mean = rouge(prediction, references, over="mean")
    alone = [rouge(prediction, [[r]])["rouge1"] for r in references[0]]

    assert best["rouge1"] == pytest.approx(1.0)
    assert mean["rouge1"] == pytest.approx(sum(alone) / 2)
    assert mean["rouge1"] < best["rouge1"]


def test_one_reference_scores_the_same_both_ways_and_both_are_reported():
    from utils.metrics import rouge_best_and_mean

    scores = rouge_best_and_mean(["a short summary"], ["a short summary of the call"])

    assert scores["rouge1"] == scores["rouge1_mean_ref"]
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum",
                           "rouge1_mean_ref", "rouge2_mean_ref", "rougeL_mean_ref", "rougeLsum_mean_ref"}
    with pytest.raises(ValueError, match="over"):
        rouge(["a"], ["a"], over="worst")
