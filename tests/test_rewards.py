"""Reward models: each reads texts with its own tokenizer and rewards the less toxic text more."""

import math
from dataclasses import replace

import pytest
import torch
from scripts.token_share_reward import TokenShareReward
from transformers import BertConfig, BertForSequenceClassification

import utils.rewards
from utils.models import build_tiny_tokenizer, load_tokenizer
from utils.plumbing.hub import HubUnreachableError
from utils.profiles import get_profile
from utils.rewards import (
    DEFAULT_CLASSIFIER,
    ClassifierScorer,
    ProfanityScorer,
    make_scorer,
)

POLITE = "Thank you so much for your help, have a lovely day."
INSULT = "You are a stupid idiot and I hate you."
TEXTS = [POLITE, INSULT, "The train leaves at ten.", ""]


def save_tiny_classifier(folder, id2label):
    """A tiny random BERT classifier and its own tokenizer, saved like a reward model."""
    tokenizer = build_tiny_tokenizer(TEXTS * 3, causal=False)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        id2label=id2label, label2id={name: index for index, name in id2label.items()},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)  # logits far enough from 0 to tell texts apart
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


def test_profanity_scorer_finds_the_insult_more_toxic_and_rewards_it_less():
    scorer = ProfanityScorer()

    toxicity = scorer.toxicity([POLITE, INSULT])
    rewards = scorer.reward([POLITE, INSULT])

    assert toxicity[1] > toxicity[0] and all(0.0 <= t <= 1.0 for t in toxicity)
    assert rewards[0] > rewards[1]
    # The reward is the log-odds of a clean text, log((1 - p) / p).
    assert rewards[0] == pytest.approx(math.log((1 - toxicity[0]) / toxicity[0]), rel=1e-6)


def test_profanity_scorer_handles_empty_texts_and_empty_lists():
    scorer = ProfanityScorer()

    assert scorer.toxicity([]) == [] and scorer.reward([]) == []
    (reward,) = scorer.reward([""])
    assert math.isfinite(reward)


@pytest.mark.parametrize("id2label", [{0: "nothate", 1: "hate"}, {0: "hate", 1: "nothate"}])
def test_classifier_reward_is_the_non_toxic_logit(tmp_path, id2label):
    model, tokenizer = save_tiny_classifier(tmp_path / "classifier", id2label)
    non_toxic = next(index for index, name in id2label.items() if name == "nothate")

    scorer = ClassifierScorer(tmp_path / "classifier", non_toxic_label="nothate", batch_size=3)
    rewards, toxicity = scorer.reward(TEXTS), scorer.toxicity(TEXTS)

    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    assert rewards == pytest.approx(logits[:, non_toxic].tolist(), abs=1e-5)
    assert toxicity == pytest.approx((1 - torch.softmax(logits, -1)[:, non_toxic]).tolist(), abs=1e-5)
    assert all(0.0 <= t <= 1.0 for t in toxicity)
    assert len(set(rewards)) == len(TEXTS)  # each text gets its own score


def test_classifier_without_the_non_toxic_label_says_which_labels_it_has(tmp_path):
    save_tiny_classifier(tmp_path / "sentiment", {0: "negative", 1: "positive"})

    with pytest.raises(ValueError, match="no label 'nothate'.*negative, positive"):
        ClassifierScorer(tmp_path / "sentiment")


def test_a_one_output_reward_model_needs_no_label(tmp_path):
    model, tokenizer = save_tiny_classifier(tmp_path / "reward_model", {0: "reward"})

    scorer = ClassifierScorer(tmp_path / "reward_model")

    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits[:, 0]
    assert scorer.reward(TEXTS) == pytest.approx(logits.tolist(), abs=1e-5)


def test_a_ranking_reward_model_is_not_read_as_a_probability_of_toxicity(tmp_path):
    save_tiny_classifier(tmp_path / "reward_model", {0: "reward"})

    scorer = ClassifierScorer(tmp_path / "reward_model")

    with pytest.raises(ValueError, match="not probabilities of toxicity"):
        scorer.toxicity(TEXTS)


def test_a_hub_classifier_without_the_hub_gives_a_clear_error():
    with pytest.raises(HubUnreachableError, match="COURSE_PROFILE=offline"):
        ClassifierScorer(DEFAULT_CLASSIFIER)


def test_token_share_reward_is_the_share_of_the_text_the_token_makes_up():
    reward = TokenShareReward("ab")

    assert reward.reward(["ab ab c", "ab", "xyz", ""]) == pytest.approx([4 / 7, 1.0, 0.0, 0.0])


def test_token_share_reward_accepts_a_token_id_with_its_tokenizer():
    tokenizer = load_tokenizer(get_profile("tiny-causal"))
    token_id = tokenizer(" the", add_special_tokens=False)["input_ids"][0]

    reward = TokenShareReward(token_id, tokenizer)

    assert reward.token == tokenizer.decode([token_id])
    with pytest.raises(ValueError, match="tokenizer"):
        TokenShareReward(token_id)


def test_make_scorer_picks_the_offline_model_or_the_one_you_give(tmp_path):
    save_tiny_classifier(tmp_path / "reward_model", {0: "nothate", 1: "hate"})

    assert isinstance(make_scorer(get_profile("tiny")), ProfanityScorer)
    assert isinstance(make_scorer(get_profile("offline")), ProfanityScorer)
    trained = make_scorer(get_profile("tiny-causal"), reward_model=tmp_path / "reward_model")
    assert isinstance(trained, ClassifierScorer) and trained.name.endswith("reward_model")


def test_make_scorer_uses_the_hub_classifier_for_online_profiles(monkeypatch):
    chosen = []
    monkeypatch.setattr(utils.rewards, "ClassifierScorer", lambda model, label, device: chosen.append((model, label)))

    make_scorer(replace(get_profile("colab"), device="cpu"))  # this machine has no GPU

    assert chosen == [(DEFAULT_CLASSIFIER, "nothate")]


def test_a_one_output_reward_model_reads_each_text_with_its_dialogue(tmp_path):
    """With prompts, the scorer gives exactly the scores of utils.reward_model.score_texts (as in training)."""
    from utils.reward_model import score_texts

    model, tokenizer = save_tiny_classifier(tmp_path / "reward_model", {0: "reward"})
    scorer = ClassifierScorer(tmp_path / "reward_model", batch_size=3)
    dialogues = ["The train leaves at ten.", POLITE, INSULT, "The train leaves at ten."]

    with_dialogues = scorer.reward(TEXTS, prompts=dialogues)

    assert with_dialogues == pytest.approx(score_texts(model, tokenizer, TEXTS, prompts=dialogues), abs=1e-5)
    assert with_dialogues != pytest.approx(scorer.reward(TEXTS), abs=1e-5)


def test_scorers_that_read_texts_alone_ignore_prompts(tmp_path):
    profanity = ProfanityScorer()
    save_tiny_classifier(tmp_path / "classifier", {0: "nothate", 1: "hate"})
    classifier = ClassifierScorer(tmp_path / "classifier")
    prompts = ["some dialogue"] * len(TEXTS)

    assert profanity.reward(TEXTS, prompts=prompts) == profanity.reward(TEXTS)
    assert classifier.reward(TEXTS, prompts=prompts) == pytest.approx(classifier.reward(TEXTS))
    assert TokenShareReward("e").reward(TEXTS, prompts=prompts) == TokenShareReward("e").reward(TEXTS)


def test_a_saved_reward_model_is_found_from_the_notebooks_folder_by_its_project_path(monkeypatch, tmp_path):
    """Notebook 07 prints runs/<profile>/...; notebook 06 runs in notebooks/, where that path is not."""
    from utils.plumbing.files import PROJECT_ROOT
    from utils.rewards import local_folder_or_hub

    monkeypatch.chdir(PROJECT_ROOT / "notebooks")
    assert local_folder_or_hub("data/detox") == str(PROJECT_ROOT / "data" / "detox")  # any folder of the project
    monkeypatch.chdir(tmp_path)
    assert local_folder_or_hub(str(tmp_path)) == str(tmp_path)


def test_a_missing_reward_model_folder_is_a_clear_error_not_a_hub_download():
    from utils.models import ModelUnavailableError
    from utils.rewards import local_folder_or_hub

    with pytest.raises(ModelUnavailableError, match="No model folder 'runs/nowhere/checkpoints/reward-model/final'"):
        local_folder_or_hub("runs/nowhere/checkpoints/reward-model/final")


DIALOGUE = ("#Person1#: My parcel never arrived and your useless driver lied about it.\n"
            "#Person2#: I'm sorry. I can see it was left at the wrong address; I'll send a new one today.")


def test_each_check_reads_a_summary_against_its_dialogue():
    from utils.rewards import copies_no_sentence, length_in_band, names_the_speakers, speakers

    good = "#Person1#'s parcel went to the wrong address; #Person2# apologizes and sends a new one today."
    copied = "#Person1# says my parcel never arrived and your useless driver lied about it, and #Person2# helps."

    assert speakers(DIALOGUE) == ["#Person1#", "#Person2#"]
    assert length_in_band(DIALOGUE, good) and not length_in_band(DIALOGUE, "A parcel.")
    assert names_the_speakers(DIALOGUE, good) and not names_the_speakers(DIALOGUE, "The customer's parcel was lost.")
    assert copies_no_sentence(DIALOGUE, good) and not copies_no_sentence(DIALOGUE, copied)


def test_the_combined_reward_is_the_weighted_sum_of_its_components():
    from utils.rewards import CombinedReward

    class FixedToxicity:
        name = "fixed"

        def toxicity(self, texts, prompts=None):
            return [0.25] * len(texts)

    reward = CombinedReward({"names the speakers": 2.0, "length in band": 1.0, "non-toxic": 0.5}, FixedToxicity())
    scores = reward(["#Person1# and #Person2# sort out a lost parcel today.", "A parcel."], [DIALOGUE] * 2)

    assert scores["names the speakers"] == [1.0, 0.0] and scores["length in band"] == [1.0, 0.0]
    assert scores["non-toxic"] == [0.75, 0.75]
    assert scores["reward"] == pytest.approx([2.0 + 1.0 + 0.5 * 0.75, 0.5 * 0.75])
    assert reward.name == "2 x names the speakers + 1 x length in band + 0.5 x non-toxic(fixed)"


def test_a_combined_reward_refuses_unknown_checks_and_toxicity_without_a_scorer():
    from utils.rewards import CombinedReward

    with pytest.raises(ValueError, match="No reward named"):
        CombinedReward({"is polite": 1.0})
    with pytest.raises(ValueError, match="needs a toxicity scorer"):
        CombinedReward({"non-toxic": 1.0})
