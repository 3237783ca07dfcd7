"""Each generation done once: the same weights, prompts and settings read back what was generated,
anything else that changes the output generates again."""

import pytest
import torch

from tests.test_generation import PROMPTS, make_talkative
from utils.adapters import add_lora
from utils.generation import generate, reuse_generations_in
from utils.models import load_model_and_tokenizer, weights_fingerprint
from utils.profiles import get_profile


class CountingGenerate:
    """Wraps `model.generate`, counting the calls that really generate."""

    def __init__(self, model):
        self.calls = 0
        self._generate = model.generate
        model.generate = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._generate(*args, **kwargs)


@pytest.fixture
def reusing(tmp_path):
    folder = tmp_path / "generations"
    reuse_generations_in(folder)
    return folder


@pytest.fixture
def talkative_model(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    return make_talkative(model), tokenizer


def summaries(model, tokenizer, **settings):
    return generate(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=8, progress=False, **settings)


def test_the_same_generation_asked_twice_is_generated_once(talkative_model, reusing):
    model, tokenizer = talkative_model
    counter = CountingGenerate(model)

    first = summaries(model, tokenizer)
    calls = counter.calls
    second = summaries(model, tokenizer)

    assert calls == 2  # two batches of the three prompts
    assert counter.calls == calls  # the second time nothing was generated
    assert second == first
    assert len(list(reusing.glob("*.json"))) == 1


def test_changed_weights_prompts_or_settings_generate_again(talkative_model, reusing):
    model, tokenizer = talkative_model
    counter = CountingGenerate(model)
    summaries(model, tokenizer)
    calls = counter.calls

    generate(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=4, progress=False)
    generate(model, tokenizer, PROMPTS[:2], batch_size=2, max_new_tokens=8, progress=False)
    generate(model, tokenizer, PROMPTS, batch_size=3, max_new_tokens=8, progress=False)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # one training step's worth of change, in place
    summaries(model, tokenizer)

    assert counter.calls == calls + 2 + 1 + 1 + 2  # every one generated
    assert len(list(reusing.glob("*.json"))) == 5


def test_a_model_with_its_adapter_switched_off_is_its_base_model(tiny_profile):
    base, _ = load_model_and_tokenizer(tiny_profile)
    model, _ = load_model_and_tokenizer(tiny_profile)
    model = add_lora(model, rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # a trained adapter: it changes what the model computes
    with_adapter = weights_fingerprint(model)
    with model.disable_adapter():
        without = weights_fingerprint(model)

    assert without == weights_fingerprint(base)
    assert with_adapter != without
    assert weights_fingerprint(model) == with_adapter  # switched on again


def test_a_reloaded_copy_of_the_same_weights_is_the_same_model():
    profile = get_profile("tiny-causal")
    first, _ = load_model_and_tokenizer(profile)
    second, _ = load_model_and_tokenizer(profile)

    assert weights_fingerprint(first) == weights_fingerprint(second)


def test_reused_sampling_leaves_the_random_generator_where_sampling_would(talkative_model, reusing):
    model, tokenizer = talkative_model
    sampling = dict(do_sample=True, temperature=1.0, top_k=0)
    counter = CountingGenerate(model)

    torch.manual_seed(0)
    sampled = summaries(model, tokenizer, **sampling)
    next_draw = torch.rand(3)
    calls = counter.calls
    torch.manual_seed(0)
    reused = summaries(model, tokenizer, **sampling)
    reused_next_draw = torch.rand(3)
    torch.manual_seed(1)
    other_seed = summaries(model, tokenizer, **sampling)

    assert counter.calls == calls + 2  # the second sampling was read back, the third (other seed) generated
    assert reused == sampled
    assert torch.equal(reused_next_draw, next_draw)
    assert other_seed != sampled


def test_without_a_reuse_folder_every_generation_runs(talkative_model):
    model, tokenizer = talkative_model
    counter = CountingGenerate(model)

    summaries(model, tokenizer)
    summaries(model, tokenizer)

    assert counter.calls == 4


def test_the_precision_is_part_of_what_makes_two_generations_the_same(talkative_model, reusing):
    model, tokenizer = talkative_model

    summaries(model, tokenizer)
    summaries(model, tokenizer, precision="bfloat16")
    summaries(model, tokenizer, precision="bfloat16")

    assert len(list(reusing.glob("*.json"))) == 2  # float32 and bf16 apart; the second bf16 one read back
