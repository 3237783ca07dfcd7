"""Notebook 06's building blocks: the PPO settings and their reasons, seeded samples, their scores, the records."""

from dataclasses import replace

import numpy as np
import torch
import pytest

from utils.detox import dpo_config, evaluation_seeds, ppo_config, sample_summaries, score_table, step_toxicity
from utils.models import load_model_and_tokenizer
from utils.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ppo_config_takes_the_profile_settings_and_overrides():
    profile = get_profile("offline")

    config = ppo_config(profile, init_kl_coef=0.0, adaptive_kl=False)

    assert (config.steps, config.batch_size, config.mini_batch_size, config.ppo_epochs) == (
        profile.ppo_steps, profile.ppo_batch_size, profile.ppo_mini_batch_size, profile.ppo_epochs)
    assert config.learning_rate == profile.ppo_learning_rate
    assert (config.max_new_tokens, config.temperature) == (profile.ppo_max_new_tokens, profile.ppo_temperature)
    assert (config.top_k, config.top_p, config.do_sample) == (0, 1.0, True)  # the policy's own distribution
    assert config.init_kl_coef == 0.0 and not config.adaptive_kl
    assert ppo_config(profile).init_kl_coef > 0 and ppo_config(profile).adaptive_kl
    assert ppo_config(profile).target_kl == profile.ppo_target_kl
    assert ppo_config(profile).kl_horizon < profile.ppo_steps * profile.ppo_batch_size  # beta moves within the run


@pytest.mark.parametrize("mixed_precision, autocast_dtype", [("bf16", "bfloat16"), ("no", None)])
def test_ppo_and_dpo_compute_in_the_profiles_mixed_precision(mixed_precision, autocast_dtype):
    profile = replace(get_profile("offline"), mixed_precision=mixed_precision)

    assert ppo_config(profile).autocast_dtype == dpo_config(profile).autocast_dtype == autocast_dtype


def test_beta_moves_in_the_log_of_a_run_with_the_profile_settings(tiny_profile, tmp_path):
    from utils.adapters import add_lora
    from utils.ppo import PolicyWithValueHead, train_ppo
    from utils.rewards import make_scorer

    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    policy = PolicyWithValueHead(add_lora(model, rank=4))
    config = ppo_config(tiny_profile)

    result = train_ppo(policy, tokenizer, make_scorer(tiny_profile).reward, ["Summarize: a b c"] * 8, config,
                       tmp_path / "ppo")

    betas = [beta for _, beta in result.series("kl_coef")]
    assert len(betas) == config.steps >= 2 and betas[0] == config.init_kl_coef
    assert abs(betas[-1] / betas[0] - 1) > 0.05, betas


def test_evaluation_seeds_are_as_many_as_the_profile_asks_and_distinct():
    profile = get_profile("tiny")

    seeds = evaluation_seeds(profile)

    assert len(seeds) == len(set(seeds)) == profile.ppo_eval_seeds >= 3


@pytest.mark.parametrize("autocast_dtype", [None, "bfloat16"])
def test_samples_have_one_row_per_prompt_one_column_per_seed_and_repeat_with_the_seed(tiny_profile, autocast_dtype):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    config = ppo_config(tiny_profile, autocast_dtype=autocast_dtype)  # bfloat16: from a bf16 copy, as PPO samples
    prompts = ["Summarize: the bus was late.", "Summarize: a refund was issued.", "Summarize: the ferry left."]

    first = sample_summaries(model, tokenizer, prompts, config, [1, 2], batch_size=2)
    again = sample_summaries(model, tokenizer, prompts, config, [1, 2], batch_size=2)

    assert len(first) == 3 and all(len(row) == 2 for row in first)
    assert first == again
    assert [row[0] for row in first] != [row[1] for row in first]  # another seed, other samples
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the model itself is left as it was


def test_score_table_keeps_the_shape_of_the_samples():
    samples = [["a", "bb"], ["ccc", ""], ["dddd", "e"]]

    table = score_table(lambda texts: [len(t) for t in texts], samples)

    assert table.shape == (3, 2)
    np.testing.assert_array_equal(table, [[1, 2], [3, 0], [4, 1]])


def test_step_toxicity_averages_each_step_responses():
    history = [{"step": 1, "responses": ["a", "bbb"]}, {"step": 2, "responses": ["cc"]}]

    assert step_toxicity(lambda texts: [len(t) for t in texts], history) == [(1, 2.0), (2, 2.0)]


def test_the_settings_table_gives_the_profiles_reason_for_each_value_the_profile_sets():
    from utils.detox import ppo_settings

    profile = get_profile("offline")
    rows = {row["setting"]: row for row in ppo_settings(profile, ppo_config(profile))}

    assert rows["learning_rate"]["value"] == profile.ppo_learning_rate
    assert rows["learning_rate"]["why"] == profile.ppo_reasons["learning_rate"]
    assert set(profile.ppo_reasons) <= set(rows)  # every reason names a setting the table shows
    assert "autocast_dtype" not in rows and "checkpoint_every" not in rows
    assert all(len(row["why"]) > 10 for row in rows.values())


@pytest.mark.parametrize("name", ["tiny", "offline", "colab", "gpu"])
def test_every_profile_gives_a_reason_for_each_ppo_setting_it_sets(name):
    profile = get_profile(name)

    assert set(profile.ppo_reasons) == {"steps", "batch_size", "mini_batch_size", "ppo_epochs", "learning_rate",
                                        "max_new_tokens", "temperature", "target_kl"}


@pytest.mark.parametrize("name", ["tiny", "offline", "colab", "gpu"])
def test_the_run_without_the_kl_penalty_changes_the_kl_coefficient_only(name):
    from dataclasses import asdict

    profile = replace(get_profile(name), device="cpu", mixed_precision="no")  # the online profiles' settings, here
    main = asdict(ppo_config(profile))
    hacking = asdict(ppo_config(profile, steps=profile.ppo_hacking_steps, init_kl_coef=0.0, adaptive_kl=False))

    changed = {key for key in main if main[key] != hacking[key]}
    assert changed <= {"steps", "init_kl_coef", "adaptive_kl"}
    assert hacking["learning_rate"] == main["learning_rate"] and hacking["steps"] >= main["steps"]


def test_the_records_carry_the_fields_the_report_reads():
    import pandas as pd

    from utils.detox import hacking_record, ppo_record
    from utils.ppo import PPOResult

    comparison = {"before_mean": 0.2, "before_std": 0.1, "after_mean": 0.1, "after_std": 0.1, "difference": -0.1,
                  "ci_low": -0.15, "ci_high": -0.05, "excludes_zero": True, "n": 40, "samples": 3}
    quality = pd.DataFrame({"before PPO": {"rouge1": 0.4, "rougeL": 0.3, "toxicity": 0.2},
                            "after PPO": {"rouge1": 0.38, "rougeL": 0.29, "toxicity": 0.1}}).T
    config = ppo_config(get_profile("offline"))
    history = [{"step": 1, "reward_mean": 1.0, "kl": 0.5, "seconds": 2.0}, {"step": 2, "reward_mean": 2.0, "kl": 1.5,
                                                                            "seconds": 3.0}]
    result = PPOResult(policy=None, output_dir=None, history=history)

    main = ppo_record(comparison, quality, config, result, "profanity")
    hacked = hacking_record(result, config, [(1, 0.3), (2, 0.2)], 0.25)

    assert main["toxicity_difference"] == -0.1 and main["rouge1_after"] == 0.38 and main["seeds"] == 3
    assert main["learning_rate"] == hacked["learning_rate"] == config.learning_rate and main["seconds"] == 5.0
    assert (hacked["reward_last"], hacked["kl_last"], hacked["toxicity_last"]) == (2.0, 1.5, 0.2)
