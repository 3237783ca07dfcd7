"""Batched generation returns one text per prompt, in order, and leaves model and tokenizer as it found them."""

import bitsandbytes as bnb
import pytest
import torch

from utils import generation
from utils.adapters import add_lora, add_prompt_tuning, has_soft_prompt, soft_prompt
from utils.generation import generate, prefix_cache, shared_prefix_inputs
from utils.models import inference_copy, load_model_and_tokenizer
from utils.quantization import add_qlora, load_4bit_model
from utils.profiles import get_profile
from utils.prompts import encode

# Different lengths on purpose: generate() sorts prompts by length and pads each batch.
PROMPTS = [
    "#Person1#: Hi.",
    "#Person1#: Where is the train station, please?\n#Person2#: Turn left at the bank.",
    "#Person1#: I'd like a coffee.\n#Person2#: Sure.",
]


def make_talkative(model):
    """Give the tiny model larger random weights, in place.

    With its initial weights (std 0.02) a tiny model writes the same token whatever the
    prompt, and an order mix-up would go unseen; with std 1.0 its greedy text depends on the prompt.
    """
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 1.0)
    return model


@pytest.fixture
def talkative_model(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    return make_talkative(model), tokenizer


def test_batched_generation_gives_each_prompt_its_own_text_in_order(talkative_model):
    model, tokenizer = talkative_model
    lengths = [len(ids) for ids in encode(tokenizer, PROMPTS, model.config.is_encoder_decoder)["input_ids"]]
    assert len(set(lengths)) == len(PROMPTS)  # so one batch needs padding

    one_by_one = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=8, progress=False)[0] for p in PROMPTS]
    batched = generate(model, tokenizer, PROMPTS, batch_size=3, max_new_tokens=8, progress=False)

    assert len(set(one_by_one)) == len(PROMPTS)  # the texts differ, so an order mix-up would show
    assert batched == one_by_one


def test_batches_smaller_than_the_prompt_list_keep_the_order(talkative_model):
    model, tokenizer = talkative_model

    in_pairs = generate(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=8, progress=False)
    reversed_prompts = generate(model, tokenizer, PROMPTS[::-1], batch_size=2, max_new_tokens=8, progress=False)

    assert reversed_prompts == in_pairs[::-1]


def test_decoder_only_generation_returns_only_the_new_text():
    model, tokenizer = load_model_and_tokenizer(get_profile("tiny-causal"))
    make_talkative(model)

    (text,) = generate(model, tokenizer, [PROMPTS[1]], max_new_tokens=8, progress=False)

    assert text
    assert "Person1" not in text and "train station" not in text


def test_generation_restores_padding_side_and_training_mode(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    # The side generate() does not use, so that a forgotten restore shows.
    tokenizer.padding_side = "left" if model.config.is_encoder_decoder else "right"
    model.train()

    outputs = generate(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=4, progress=False)

    assert len(outputs) == len(PROMPTS) and all(isinstance(o, str) for o in outputs)
    assert tokenizer.padding_side == ("left" if model.config.is_encoder_decoder else "right")
    assert model.training


def test_generation_restores_them_after_an_error_too(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    tokenizer.padding_side = "left" if model.config.is_encoder_decoder else "right"
    model.train()

    with pytest.raises(Exception):
        generate(model, tokenizer, PROMPTS, max_new_tokens=4, progress=False, num_beams=0)

    assert tokenizer.padding_side == ("left" if model.config.is_encoder_decoder else "right")
    assert model.training


def test_generation_of_no_prompts_is_an_empty_list(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer

    assert generate(model, tokenizer, [], progress=False) == []


# A long start that every prompt shares, as a chat template's system turn and an instruction are.
SHARED_START = "Summarize the following conversation between the two people in one short sentence.\n\n"


def test_shared_prefix_inputs_put_the_common_start_first_and_the_padding_after_it():
    start = list(range(100, 120))  # 20 tokens every row begins with
    rows = [start + [1, 2, 3], start + [4]]

    input_ids, mask, prefix = shared_prefix_inputs(rows, pad_token_id=0)

    assert prefix == 20
    assert input_ids.tolist() == [start + [1, 2, 3], start + [0, 0, 4]]
    assert mask.tolist() == [[1] * 23, [1] * 20 + [0, 0, 1]]
    assert shared_prefix_inputs([start + [1]], pad_token_id=0) is None  # one prompt: nothing to share
    assert shared_prefix_inputs([[1, 2, 3], [1, 2, 4]], pad_token_id=0) is None  # too short to pay


def test_prompts_that_start_alike_read_their_start_once_and_write_what_each_writes_alone(
        tiny_model_and_tokenizer, monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer
    make_talkative(model)
    prompts = [SHARED_START + prompt for prompt in PROMPTS]
    read_once = []
    monkeypatch.setattr(generation, "prefix_cache",
                        lambda *args: read_once.append(args[2]) or prefix_cache(*args))

    one_by_one = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=8, progress=False)[0] for p in prompts]
    batched = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=8, progress=False)
    read_whole = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=8, progress=False,
                          share_prompt_start=False)

    assert batched == one_by_one == read_whole
    assert len(set(batched)) == len(prompts)  # the texts differ, so a mix-up would show
    # decoder-only: one batch of three shared its start; an encoder reads its whole input at once
    assert read_once == ([] if model.config.is_encoder_decoder else [3])


# --- generating in bf16 from a copy ---------------------------------------------------------------


def weights_of(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def test_generating_in_bf16_uses_a_merged_bf16_copy_and_leaves_the_model_as_it_was(tiny_profile):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    model = add_lora(make_talkative(model), rank=4)
    with torch.no_grad():  # an adapter that changes the outputs, as after training
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    before = weights_of(model)

    copy = inference_copy(model, "bfloat16")
    texts = generate(model, tokenizer, PROMPTS, batch_size=3, max_new_tokens=8, progress=False, precision="bfloat16")

    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert not any("lora" in name for name, _ in copy.named_parameters())  # the adapter is merged in
    assert texts == generate(copy, tokenizer, PROMPTS, batch_size=3, max_new_tokens=8, progress=False)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())  # float32, untouched
    assert inference_copy(model, None) is model
    assert inference_copy(copy, "bfloat16") is copy  # already bf16: nothing to copy


def test_a_bf16_copy_with_the_adapter_switched_off_is_the_base_model(tiny_profile):
    model, _ = load_model_and_tokenizer(tiny_profile)
    model = add_lora(make_talkative(model), rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    with model.disable_adapter():
        switched_off = inference_copy(model, "bfloat16")
    base_weights = {name.replace(".base_layer", ""): p for name, p in model.get_base_model().named_parameters()
                    if "lora_" not in name}

    copied = dict(switched_off.named_parameters())

    assert copied.keys() == base_weights.keys()  # no adapter left, and none merged in:
    assert all(torch.equal(base_weights[name].to(torch.bfloat16), p) for name, p in copied.items())


def test_a_bf16_copy_of_a_soft_prompt_model_keeps_its_soft_prompt(tiny_profile):
    model, tokenizer = load_model_and_tokenizer(tiny_profile)
    prompted = add_prompt_tuning(make_talkative(model), tokenizer, num_virtual_tokens=4)

    copy = inference_copy(prompted, "bfloat16")
    texts = generate(prompted, tokenizer, PROMPTS, batch_size=3, max_new_tokens=8, progress=False, precision="bfloat16")

    assert has_soft_prompt(copy)
    assert torch.equal(soft_prompt(copy), soft_prompt(prompted).to(torch.bfloat16))
    assert len(texts) == len(PROMPTS) and all(isinstance(text, str) for text in texts)
    assert {p.dtype for p in prompted.parameters()} == {torch.float32}


def adapted_4bit_model(profile):
    """A 4-bit model with a LoRA adapter that changes its outputs, as after training, and its first adapted layer."""
    model = add_qlora(load_4bit_model(profile), profile, rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    name, layer = next((name, module) for name, module in model.get_base_model().named_modules()
                       if hasattr(module, "lora_A"))
    return model, name, layer


def dequantized(linear_4bit):
    return bnb.functional.dequantize_4bit(linear_4bit.weight.data, linear_4bit.weight.quant_state)


def test_a_4bit_model_on_the_cpu_generates_from_a_dequantized_bf16_copy_with_its_adapter_merged(tiny_profile):
    model, name, layer = adapted_4bit_model(tiny_profile)
    expected = (dequantized(layer.base_layer) + layer.get_delta_weight("default")).to(torch.bfloat16)

    copy = inference_copy(model, "bfloat16")

    assert not any(isinstance(module, bnb.nn.Linear4bit) for module in copy.modules())
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert not any("lora" in parameter_name for parameter_name, _ in copy.named_parameters())
    assert torch.equal(copy.get_submodule(name).weight, expected)  # merged in float32, not rounded to 4 bits
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit)  # the model itself is still 4-bit


def test_a_4bit_copy_with_the_adapter_switched_off_is_the_dequantized_base(tiny_profile):
    model, name, layer = adapted_4bit_model(tiny_profile)

    with model.disable_adapter():
        copy = inference_copy(model, "bfloat16")

    assert torch.equal(copy.get_submodule(name).weight, dequantized(layer.base_layer).to(torch.bfloat16))
