"""Instruction templates and turning an instruction into the text a model reads."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from utils.families import uses_chat_template

# The classic template of the original labs, then FLAN-style phrasings of the same task.
TEMPLATES: dict[str, str] = {
    "classic": "Summarize the following conversation.\n\n{dialogue}\n\nSummary:",
    "flan_what_happened": "Dialogue:\n{dialogue}\n\nWhat was going on in this conversation?",
    "flan_briefly": "{dialogue}\n\nBriefly summarize that dialogue.",
    "flan_short_summary": "Here is a dialogue:\n{dialogue}\n\nWrite a short summary.",
    "flan_question": "Dialogue:\n{dialogue}\n\nWhat is a summary of this dialogue?",
    "flan_one_sentence": "Read the dialogue and say in one or two sentences what happened.\n\n{dialogue}",
}
# A second task on the same dialogues (notebook 03 swaps adapters between the two).
TOPIC_TEMPLATE = "What is the topic of this conversation? Answer in one to three words.\n\n{dialogue}\n\nTopic:"
DEFAULT_TEMPLATE = "classic"
# The text a soft prompt starts from when it is initialised from words (notebook 04).
SOFT_PROMPT_INIT_TEXT = "Summarize the following conversation in one or two sentences."


def instruction(
    dialogue: str,
    template: str = DEFAULT_TEMPLATE,
    examples: Sequence[tuple[str, str]] = (),
) -> str:
    """The instruction for one dialogue; `examples` (dialogue, summary) pairs make it few-shot."""
    patterns = {**TEMPLATES, "topic": TOPIC_TEMPLATE}
    if template not in patterns:
        raise ValueError(f"Unknown template {template!r}. Known: {', '.join(patterns)}.")
    pattern = patterns[template]
    shots = [pattern.format(dialogue=d) + " " + s for d, s in examples]
    return "\n\n\n".join([*shots, pattern.format(dialogue=dialogue)])


def model_input(tokenizer: PreTrainedTokenizerBase, text: str, is_encoder_decoder: bool) -> str:
    """The string to tokenize for `text`: wrapped as a user turn when the model has a chat template."""
    if uses_chat_template(tokenizer, is_encoder_decoder):
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text


def encode(tokenizer: PreTrainedTokenizerBase, texts, is_encoder_decoder: bool, **kwargs):
    """Tokenize model inputs the same way for training and generation.

    Chat-formatted text already holds its special tokens; everything else gets the
    tokenizer's own (T5 appends </s>).
    """
    add_special = not uses_chat_template(tokenizer, is_encoder_decoder)
    return tokenizer(texts, add_special_tokens=add_special, **kwargs)
