"""Profiles: looking them up, choosing one from the machine, and overriding data and sizes."""

from types import SimpleNamespace

import json
import pytest
import torch

import utils.plumbing.hub
import utils.profiles
from utils.plumbing.hub import hub_reachable
from utils.profiles import (
    DECODER_ONLY,
    ENCODER_DECODER,
    GPU_HEADROOM,
    MODEL_SHAPES,
    PROFILES,
    ModelShape,
    ProfileError,
    choose_profile,
    get_profile,
    profile_peak_bytes,
    training_peak_bytes,
    with_overrides,
)

ALL_NAMES = ["tiny", "tiny-causal", "offline", "colab", "gpu"]


@pytest.fixture(autouse=True)
def fresh_hub_answer():
    """hub_reachable() is lru_cached: forget its answer around every test."""
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine: set whether it is Colab, has CUDA, reaches the Hub."""

    def pretend(colab=False, cuda=False, hub=False, gpu_gb=80):
        monkeypatch.setattr(utils.profiles, "in_colab", lambda: colab)
        monkeypatch.setattr(utils.profiles, "cuda_available", lambda: cuda)
        monkeypatch.setattr(utils.plumbing.hub, "hub_reachable", lambda *args, **kwargs: hub)
        properties = SimpleNamespace(total_memory=gpu_gb * 2**30, name="pretend GPU")
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=0: properties)

    return pretend


@pytest.mark.parametrize("name", ALL_NAMES)
def test_get_profile_returns_the_profile_of_that_name(name):
    profile = get_profile(name)

    assert profile.name == name
    assert profile.family in (ENCODER_DECODER, DECODER_ONLY)


def test_the_profiles_are_exactly_the_documented_five():
    assert sorted(PROFILES) == sorted(ALL_NAMES)


def test_tiny_profiles_cover_both_families_without_the_hub():
    assert get_profile("tiny").is_encoder_decoder
    assert not get_profile("tiny-causal").is_encoder_decoder
    assert not get_profile("tiny").needs_hub and not get_profile("tiny-causal").needs_hub


def test_unknown_profile_raises_profile_error_listing_every_valid_name():
    with pytest.raises(ProfileError) as raised:
        get_profile("nonsense")

    message = str(raised.value)
    assert "nonsense" in message
    for name in ALL_NAMES:
        assert name in message


def test_profile_error_is_a_value_error():
    assert issubclass(ProfileError, ValueError)


def test_course_profile_variable_wins(machine):
    machine(colab=True, cuda=True, hub=True)

    profile, reason = choose_profile({"COURSE_PROFILE": "tiny-causal"})

    assert profile.name == "tiny-causal"
    assert "COURSE_PROFILE" in reason


def test_course_profile_variable_is_stripped():
    profile, _ = choose_profile({"COURSE_PROFILE": "  tiny \n"})

    assert profile.name == "tiny"


def test_unknown_course_profile_variable_raises():
    with pytest.raises(ProfileError, match="Valid profiles"):
        choose_profile({"COURSE_PROFILE": "nonsense"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the choice on a machine without CUDA")
def test_without_course_profile_this_cpu_machine_gets_offline(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)

    profile, reason = choose_profile({})

    assert profile.name == "offline"
    assert "no CUDA" in reason


def test_empty_course_profile_counts_as_unset(machine):
    machine(colab=False, cuda=False)

    profile, _ = choose_profile({"COURSE_PROFILE": ""})

    assert profile.name == "offline"


def test_colab_gets_the_colab_profile(machine):
    machine(colab=True, cuda=True, hub=False)

    profile, reason = choose_profile({})

    assert profile.name == "colab"
    assert "Colab" in reason


def test_a_large_cuda_gpu_with_the_hub_gets_the_gpu_profile(machine):
    machine(colab=False, cuda=True, hub=True, gpu_gb=80)

    profile, reason = choose_profile({})

    assert profile.name == "gpu"
    assert "a CUDA GPU with 80 GB and the Hugging Face Hub: the gpu profile" in reason and "estimated" in reason


@pytest.mark.parametrize("gpu_gb", [8, 16, 24])
def test_a_smaller_cuda_gpu_gets_the_colab_profiles_sizes_and_says_why(machine, gpu_gb):
    machine(colab=False, cuda=True, hub=True, gpu_gb=gpu_gb)

    profile, reason = choose_profile({})

    assert profile.name == "colab"
    assert reason.startswith(f"a CUDA GPU with {gpu_gb} GB: the colab profile's sizes")
    colab_fits = profile_peak_bytes(PROFILES["colab"]) <= GPU_HEADROOM * gpu_gb * 2**30
    assert ("COURSE_PROFILE=offline" in reason) == (not colab_fits)  # where even colab's estimate does not fit


def test_the_gpu_profile_is_chosen_exactly_where_its_estimated_peak_fits(machine):
    needed = profile_peak_bytes(PROFILES["gpu"]) / 2**30 / GPU_HEADROOM
    machine(colab=False, cuda=True, hub=True, gpu_gb=needed * 1.01)
    assert choose_profile({})[0].name == "gpu"
    machine(colab=False, cuda=True, hub=True, gpu_gb=needed * 0.99)
    assert choose_profile({})[0].name == "colab"


def test_the_training_peak_estimate_adds_states_activations_and_logits():
    shape = ModelShape(parameters=1000, width=8, feed_forward=16, heads=2, encoder_layers=0, decoder_layers=3,
                       vocab=50, attention_scores_kept=True, feed_forward_kept=4)
    per_token_layer = 10 * 8 + 4 * 16 + 3 * 2 * 6  # six tokens: four of prompt, two of answer
    expected = 16 * 1000 + 4 * 2 * (3 * 6 * per_token_layer + 3 * 2 * 50)  # batch 2
    assert training_peak_bytes(shape, batch=2, source_tokens=4, target_tokens=2) == expected
    # twice the batch: the model states stay, the activations double
    assert training_peak_bytes(shape, 4, 4, 2) - training_peak_bytes(shape, 2, 4, 2) == expected - 16 * 1000


def test_the_estimates_shape_of_flan_t5_is_the_stand_ins():
    from utils.apps.hub_standins import FLAN_T5, FLAN_T5_BASE_DIMENSIONS

    shape = MODEL_SHAPES[FLAN_T5]
    assert (shape.width, shape.feed_forward, shape.heads, shape.encoder_layers, shape.decoder_layers) == tuple(
        FLAN_T5_BASE_DIMENSIONS[key] for key in ("d_model", "d_ff", "num_heads", "num_layers", "num_decoder_layers"))
    assert profile_peak_bytes(PROFILES["gpu"]) > profile_peak_bytes(PROFILES["colab"])  # batch 32 against 8


def test_cuda_without_the_hub_gets_offline(machine):
    machine(colab=False, cuda=True, hub=False)

    profile, reason = choose_profile({})

    assert profile.name == "offline"
    assert "not reachable" in reason


def test_cuda_with_hf_hub_offline_gets_offline_through_the_real_hub_check(monkeypatch):
    """No patched hub_reachable here: HF_HUB_OFFLINE=1 (set by conftest) makes the real one say no."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(utils.profiles, "in_colab", lambda: False)
    monkeypatch.setattr(utils.profiles, "cuda_available", lambda: True)

    profile, _ = choose_profile({})

    assert profile.name == "offline"


def test_no_overrides_returns_the_same_profile():
    tiny = get_profile("tiny")

    assert with_overrides(tiny, {}) is tiny


def test_course_data_overrides_the_data_source(tmp_path):
    profile = with_overrides(get_profile("tiny"), {"COURSE_DATA": str(tmp_path / "mine.jsonl")})

    assert profile.data == str(tmp_path / "mine.jsonl")
    assert profile.model == get_profile("tiny").model  # nothing else changes


def test_example_counts_are_overridden_per_split():
    profile = with_overrides(
        get_profile("offline"),
        {"COURSE_TRAIN_EXAMPLES": "100", "COURSE_VALIDATION_EXAMPLES": "20", "COURSE_TEST_EXAMPLES": "30"},
    )

    assert (profile.train_examples, profile.validation_examples, profile.test_examples) == (100, 20, 30)


def test_overrides_leave_the_original_profile_unchanged():
    tiny = get_profile("tiny")
    original = tiny.train_examples

    changed = with_overrides(tiny, {"COURSE_TRAIN_EXAMPLES": str(original + 1)})

    assert changed.train_examples == original + 1
    assert get_profile("tiny").train_examples == original


def test_overrides_are_read_from_the_environment_by_default(monkeypatch):
    monkeypatch.setenv("COURSE_TEST_EXAMPLES", "5")

    assert with_overrides(get_profile("tiny")).test_examples == 5


@pytest.mark.parametrize("value", ["lots", "-5", "0"])  # 0 is not "no limit": "all" is
def test_a_bad_example_count_raises_profile_error_naming_the_variable(value):
    with pytest.raises(ProfileError) as raised:
        with_overrides(get_profile("tiny"), {"COURSE_TRAIN_EXAMPLES": value})

    assert "COURSE_TRAIN_EXAMPLES" in str(raised.value)
    assert repr(value) in str(raised.value) and '"all"' in str(raised.value)


def test_all_examples_is_spelt_all_as_in_the_profiles_file():
    assert with_overrides(get_profile("tiny"), {"COURSE_TRAIN_EXAMPLES": "all"}).train_examples is None


@pytest.mark.parametrize("value", ["maybe", "on", "2"])
def test_course_smoke_other_than_1_or_0_is_a_profile_error(value):
    with pytest.raises(ProfileError, match=f"COURSE_SMOKE must be 1 or 0.*{value}"):
        with_overrides(get_profile("offline"), {"COURSE_SMOKE": value})
    assert with_overrides(get_profile("offline"), {"COURSE_SMOKE": "false"}) == get_profile("offline")


def test_an_unknown_mixed_precision_is_a_profile_error():
    with pytest.raises(ProfileError, match="COURSE_MIXED_PRECISION must be one of auto, bf16, no, not 'fp8'"):
        with_overrides(get_profile("offline"), {"COURSE_MIXED_PRECISION": "fp8"})


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_profile_has_usable_ppo_and_reward_model_settings(name):
    profile = get_profile(name)

    assert profile.ppo_batch_size % profile.ppo_mini_batch_size == 0  # PPOConfig refuses anything else
    assert profile.ppo_steps > 0 and profile.ppo_hacking_steps > 0 and profile.ppo_epochs >= 1
    assert profile.ppo_eval_seeds >= 3  # before/after toxicity is compared over at least three seeds
    assert profile.ppo_temperature > 0 and profile.ppo_max_new_tokens > 0
    assert profile.reward_epochs > 0 and (profile.reward_max_steps == -1 or profile.reward_max_steps > 0)


def test_course_smoke_keeps_the_model_dtype_and_data_and_takes_the_test_sizes():
    gpu = get_profile("gpu")

    smoke = with_overrides(gpu, {"COURSE_SMOKE": "1"})

    assert (smoke.model, smoke.family, smoke.dtype, smoke.data) == (gpu.model, gpu.family, gpu.dtype, gpu.data)
    assert smoke.train_examples == get_profile("tiny").train_examples and smoke.max_steps == get_profile("tiny").max_steps
    assert smoke.device == "auto"  # the CPU when there is no GPU
    assert with_overrides(gpu, {}) == gpu


def test_the_online_profiles_name_the_hub_repositories_they_load():
    from utils.profiles import hub_repos

    repos = {(repo.repo_id, repo.repo_type) for repo in hub_repos(get_profile("colab"))}

    assert ("google/flan-t5-base", "model") in repos and ("knkarthick/dialogsum", "dataset") in repos
    assert len(repos) == 4
    assert hub_repos(get_profile("offline")) == []


def test_the_hub_check_asks_only_for_what_the_selected_notebooks_load():
    from utils.profiles import ONLINE_REWARD_BACKBONE, ONLINE_TOXICITY_CLASSIFIER, hub_repos

    def ids(notebooks):
        return {repo.repo_id for repo in hub_repos(get_profile("colab"), notebooks)}

    assert ids(["02", "03"]) == {"google/flan-t5-base", "knkarthick/dialogsum"}
    assert ids(["06_rlhf_ppo"]) == {"google/flan-t5-base", "knkarthick/dialogsum", ONLINE_TOXICITY_CLASSIFIER}
    assert ONLINE_REWARD_BACKBONE in ids(["07"]) and ONLINE_TOXICITY_CLASSIFIER not in ids(["07"])
    assert len(ids(["99_new"])) == 4  # a notebook the list does not know: everything, to be safe


# --- configs/profiles.toml --------------------------------------------------------------------


def write_profiles(tmp_path, text):
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    return path


def toml_value(value) -> str:
    """A profile setting written as TOML: strings quoted, booleans in lower case, dicts as inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def test_a_profile_like_another_changes_only_what_it_writes(tmp_path):
    offline = PROFILES["offline"]
    lines = [f"{key} = {toml_value(value)}" for key, value in vars(offline).items()
             if key not in ("name", "data_label", "sweep_ranks", "test_examples")]
    text = "[base]\n" + "\n".join(lines) + '\nsweep_ranks = [2, 8]\ntest_examples = "all"\n'
    text += '\n[bigger]\nlike = "base"\nbatch_size = 32\n'

    profiles = utils.profiles.read_profiles(write_profiles(tmp_path, text))

    assert profiles["base"].sweep_ranks == (2, 8) and profiles["base"].test_examples is None  # "all": every row
    assert profiles["bigger"].batch_size == 32 and profiles["bigger"].name == "bigger"
    assert profiles["bigger"].full_learning_rate == offline.full_learning_rate


def test_a_misspelt_setting_is_a_profile_error_naming_it(tmp_path):
    path = write_profiles(tmp_path, '[tiny2]\nlike = "tiny"\n')  # like a profile not in this file
    with pytest.raises(ProfileError, match="not written above it"):
        utils.profiles.read_profiles(path)
    path = write_profiles(tmp_path, '[mine]\ndescription = "x"\nbatch_sise = 4\n')
    with pytest.raises(ProfileError, match=r"'mine' has unknown settings \['batch_sise'\]"):
        utils.profiles.read_profiles(path)


def test_a_missing_setting_is_a_profile_error_naming_the_profile(tmp_path):
    path = write_profiles(tmp_path, '[mine]\ndescription = "x"\n')
    with pytest.raises(ProfileError, match="profile 'mine'.*missing"):
        utils.profiles.read_profiles(path)
