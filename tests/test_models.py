"""Loading the profile's model: tiny models built from a config, cached, and clear errors otherwise."""

import importlib.util

import pytest
import torch

import utils.models
from utils.models import (
    SMOLLM2_INSTALL,
    ModelUnavailableError,
    _tiny_corpus,
    build_tiny_model,
    build_tiny_tokenizer,
    count_parameters,
    ensure_tiny_model,
    resolve_device,
    smollm2_gguf_path,
)
from utils.profiles import TINY_LLAMA, TINY_T5, ProfileError, get_profile


class Interrupted(Exception):
    """Stands for Ctrl-C or a full disk in the middle of saving."""


def test_model_and_tokenizer_load_for_both_tiny_profiles(tiny_profile, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer

    assert model.config.is_encoder_decoder == tiny_profile.is_encoder_decoder
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    assert len(tokenizer) == model.config.vocab_size


def test_tiny_models_are_small(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer

    trainable, total = count_parameters(model)

    assert trainable == total < 1_000_000


@pytest.mark.parametrize("kind", [TINY_T5, TINY_LLAMA])
def test_building_twice_with_the_same_seed_gives_identical_weights(kind):
    texts = _tiny_corpus()
    first_tokenizer = build_tiny_tokenizer(texts, causal=kind == TINY_LLAMA)
    second_tokenizer = build_tiny_tokenizer(texts, causal=kind == TINY_LLAMA)

    first = build_tiny_model(kind, first_tokenizer, seed=0).state_dict()
    second = build_tiny_model(kind, second_tokenizer, seed=0).state_dict()

    assert first_tokenizer.get_vocab() == second_tokenizer.get_vocab()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_a_different_seed_gives_different_weights():
    tokenizer = build_tiny_tokenizer(_tiny_corpus(), causal=True)

    first = build_tiny_model(TINY_LLAMA, tokenizer, seed=0).state_dict()
    second = build_tiny_model(TINY_LLAMA, tokenizer, seed=1).state_dict()

    assert not torch.equal(first["model.embed_tokens.weight"], second["model.embed_tokens.weight"])


@pytest.mark.parametrize("kind", [TINY_T5, TINY_LLAMA])
def test_ensure_tiny_model_reuses_the_cached_folder_without_rebuilding(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    folder = ensure_tiny_model(kind)
    weights = folder / "model.safetensors"
    built_at = weights.stat().st_mtime_ns

    monkeypatch.setattr(utils.models, "build_tiny_model", lambda *a, **k: pytest.fail("rebuilt the model"))
    again = ensure_tiny_model(kind)

    assert again == folder
    assert folder.parent == tmp_path
    assert weights.stat().st_mtime_ns == built_at


@pytest.mark.parametrize("kind", [TINY_T5, TINY_LLAMA])
def test_tiny_weights_are_saved_as_safetensors_only(kind):
    folder = ensure_tiny_model(kind)

    files = {path.name for path in folder.iterdir()}

    assert "model.safetensors" in files and "config.json" in files
    assert not [name for name in files if name.endswith(".bin")]


def test_tiny_causal_tokenizer_has_a_chat_template(tiny_model_and_tokenizer, tiny_profile):
    _, tokenizer = tiny_model_and_tokenizer

    if tiny_profile.is_encoder_decoder:
        assert tokenizer.chat_template is None  # T5 reads plain text
    else:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
        )
        assert text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_t5_tokenizer_ends_every_text_with_eos():
    tokenizer = utils.models.load_tokenizer(get_profile("tiny"))

    ids = tokenizer("#Person1#: Hello.")["input_ids"]

    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[:-1]


def test_an_interrupted_build_leaves_no_model_folder_and_a_later_call_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    real_build = utils.models.build_tiny_model

    def build_then_fail_while_saving(kind, tokenizer, seed=0):
        model = real_build(kind, tokenizer, seed)
        real_save = model.save_pretrained

        def save_half(folder, **kwargs):
            real_save(folder, **kwargs)  # config.json and weights are written...
            raise Interrupted  # ...and then the tokenizer never is

        model.save_pretrained = save_half
        return model

    monkeypatch.setattr(utils.models, "build_tiny_model", build_then_fail_while_saving)
    with pytest.raises(Interrupted):
        ensure_tiny_model(TINY_LLAMA)

    assert list(tmp_path.rglob("config.json")) == []
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(utils.models, "build_tiny_model", real_build)
    folder = ensure_tiny_model(TINY_LLAMA)
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()


def test_smollm2_missing_package_raises_with_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_smollm2(name, *args, **kwargs):
        return None if name == utils.models.SMOLLM2_PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(utils.models.importlib.util, "find_spec", without_smollm2)

    with pytest.raises(ModelUnavailableError) as raised:
        smollm2_gguf_path()

    assert SMOLLM2_INSTALL in str(raised.value)
    assert "pip install" in str(raised.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks a machine without CUDA")
def test_a_cuda_profile_on_a_machine_without_cuda_raises_a_profile_error():
    with pytest.raises(ProfileError, match="COURSE_PROFILE=offline"):
        resolve_device(get_profile("colab"))



def test_the_offline_profile_uses_a_gpu_when_there_is_one(monkeypatch):
    """On a CUDA machine without the Hub the course picks `offline`: it then runs on the GPU, in bf16."""
    from utils.models import resolve_device, resolve_dtype
    from utils.profiles import get_profile

    offline = get_profile("offline")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert (resolve_device(offline).type, resolve_dtype(offline)) == ("cuda", torch.bfloat16)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert (resolve_device(offline).type, resolve_dtype(offline)) == ("mps", torch.float32)

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert (resolve_device(offline).type, resolve_dtype(offline)) == ("cpu", torch.float32)


def test_training_computes_in_bf16_only_where_the_hardware_does_it_natively(monkeypatch):
    from dataclasses import replace

    from utils import models
    from utils.models import training_precision
    from utils.profiles import get_profile

    offline = get_profile("offline")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert training_precision(offline) == (torch.bfloat16, "bf16 autocast: this CPU computes bf16 natively (avx512_bf16)")
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2", "fma"})
    dtype, why = training_precision(offline)
    assert dtype is None and "emulated" in why
    assert training_precision(replace(offline, mixed_precision="bf16"))[0] == torch.bfloat16
    assert training_precision(get_profile("tiny"))[0] is None  # the tests: float32 everywhere

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    assert training_precision(offline)[0] is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    assert training_precision(offline)[0] == torch.bfloat16

    with pytest.raises(ProfileError, match="mixed_precision must be"):
        training_precision(replace(offline, mixed_precision="fp16"))
