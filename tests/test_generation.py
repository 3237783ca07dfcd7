"""Batched generation returns one text per prompt, in order, and leaves model and tokenizer as it found them."""

import pytest
import torch

from utils import generation
from utils.generation import generate, prefix_cache, shared_prefix_inputs
from utils.models import load_model_and_tokenizer
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
