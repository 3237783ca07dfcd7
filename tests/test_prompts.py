"""Instruction templates, few-shot prompts and the chat format."""

import pytest

from utils.models import load_tokenizer
from utils.profiles import get_profile
from utils.prompts import DEFAULT_TEMPLATE, TEMPLATES, encode, instruction, model_input, uses_chat_template

DIALOGUE = "#Person1#: Is the library open on Sunday?\n#Person2#: Only in the afternoon."


@pytest.fixture(scope="module")
def t5_tokenizer():
    return load_tokenizer(get_profile("tiny"))


@pytest.fixture(scope="module")
def chat_tokenizer():
    return load_tokenizer(get_profile("tiny-causal"))


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_holds_the_dialogue_once(name):
    assert TEMPLATES[name].count("{dialogue}") == 1
    assert DIALOGUE in instruction(DIALOGUE, name)


def test_the_default_template_is_the_classic_one():
    assert DEFAULT_TEMPLATE == "classic"
    assert instruction(DIALOGUE) == f"Summarize the following conversation.\n\n{DIALOGUE}\n\nSummary:"


def test_instruction_with_examples_holds_each_example_and_ends_with_the_target_dialogue():
    examples = [
        ("#Person1#: Coffee?\n#Person2#: Yes, black.", "#Person2# wants black coffee."),
        ("#Person1#: Train at six?\n#Person2#: At seven.", "The train leaves at seven."),
    ]

    prompt = instruction(DIALOGUE, "classic", examples)

    for example_dialogue, example_summary in examples:
        assert f"{example_dialogue}\n\nSummary: {example_summary}" in prompt
    assert prompt.endswith(instruction(DIALOGUE, "classic"))
    assert prompt.index(examples[0][1]) < prompt.index(examples[1][1]) < prompt.index(DIALOGUE)


def test_instruction_without_examples_is_zero_shot():
    assert instruction(DIALOGUE, "flan_briefly") == TEMPLATES["flan_briefly"].format(dialogue=DIALOGUE)


def test_unknown_template_raises_value_error_listing_the_known_ones():
    with pytest.raises(ValueError) as raised:
        instruction(DIALOGUE, "no_such_template")

    assert "no_such_template" in str(raised.value)
    assert "classic" in str(raised.value)


def test_model_input_wraps_a_decoder_only_prompt_in_its_chat_template(chat_tokenizer):
    text = instruction(DIALOGUE)

    wrapped = model_input(chat_tokenizer, text, is_encoder_decoder=False)

    assert wrapped == f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def test_model_input_leaves_encoder_decoder_text_plain(t5_tokenizer, chat_tokenizer):
    text = instruction(DIALOGUE)

    assert model_input(t5_tokenizer, text, is_encoder_decoder=True) == text
    # Even a tokenizer with a chat template: an encoder-decoder reads plain text.
    assert model_input(chat_tokenizer, text, is_encoder_decoder=True) == text


def test_model_input_leaves_text_plain_for_a_decoder_without_chat_template(chat_tokenizer):
    plain = chat_tokenizer.__class__.from_pretrained(chat_tokenizer.name_or_path)
    plain.chat_template = None

    assert not uses_chat_template(plain, is_encoder_decoder=False)
    assert model_input(plain, "Hello", is_encoder_decoder=False) == "Hello"


def test_encode_adds_no_second_set_of_special_tokens_to_chat_text(chat_tokenizer, t5_tokenizer):
    chat_ids = encode(chat_tokenizer, model_input(chat_tokenizer, "Hello", False), False)["input_ids"]
    t5_ids = encode(t5_tokenizer, "Hello", True)["input_ids"]

    assert chat_ids.count(chat_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # user and assistant turns
    assert t5_ids[-1] == t5_tokenizer.eos_token_id  # T5 text gets its </s>
