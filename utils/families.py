"""Where the two model families differ, and the only place they do.

An encoder-decoder (FLAN-T5) reads the prompt with its encoder and writes the answer with its
decoder; a decoder-only model (SmolLM2, Llama) reads prompt and answer as one sequence. Every
other module calls these functions with `is_encoder_decoder` and has no branch of its own:

- loading: which Auto class, and which PEFT task type;
- input text: a decoder-only instruct model reads its chat template, an encoder-decoder plain text;
- training examples: separate encoder input and decoder labels, or one sequence whose prompt
  positions carry no labels;
- generation: how prompts are padded, whether they can share their common start, and where the
  answer starts in what `generate` returns;
- scoring a given answer: the logits that predict each of its tokens (PPO, next-token plots);
- feature extraction: which layers are the last ones before the output head.
"""

from __future__ import annotations

import torch
from peft import TaskType
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label of positions the loss skips


def auto_model_class(is_encoder_decoder: bool) -> type:
    """The transformers Auto class that loads a model of the family."""
    return AutoModelForSeq2SeqLM if is_encoder_decoder else AutoModelForCausalLM


def peft_task_type(is_encoder_decoder: bool) -> TaskType:
    """The PEFT task type of the family."""
    return TaskType.SEQ_2_SEQ_LM if is_encoder_decoder else TaskType.CAUSAL_LM


def last_layers(model: torch.nn.Module, is_encoder_decoder: bool, blocks: int) -> list[torch.nn.Module]:
    """The last `blocks` blocks of the stack that writes the answer, and its final norm.

    Encoder-decoder: the decoder's blocks (T5's `decoder.block`); decoder-only: the model's
    layers (Llama's `model.layers`). What comes after them is the output head.
    """
    decoder = model.get_decoder()
    stack, norm = (decoder.block, decoder.final_layer_norm) if is_encoder_decoder else (decoder.layers, decoder.norm)
    if not 1 <= blocks <= len(stack):
        raise ValueError(f"blocks must be between 1 and {len(stack)} (the model's blocks), not {blocks}.")
    return [*stack[-blocks:], norm]


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool) -> bool:
    """Decoder-only instruct models read their chat format; encoder-decoders read plain text."""
    return not is_encoder_decoder and tokenizer.chat_template is not None


def inputs_and_labels(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    targets: list[str],
    max_target_tokens: int,
    is_encoder_decoder: bool,
) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, labels) of training examples: tokenized prompts and the texts to learn after them.

    Encoder-decoder: the prompt goes to the encoder, the target is the decoder's labels.
    Decoder-only: prompt and target form one sequence; the prompt's labels are IGNORE_INDEX,
    so the loss counts only the target (and the end-of-sequence token after it).
    """
    answers = answer_ids(tokenizer, targets, max_target_tokens, is_encoder_decoder)
    if is_encoder_decoder:
        return prompt_ids, answers
    input_ids, labels = [], []
    for prompt, answer in zip(prompt_ids, answers):
        input_ids.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    return input_ids, labels


def answer_ids(
    tokenizer: PreTrainedTokenizerBase, targets: list[str], max_target_tokens: int, is_encoder_decoder: bool
) -> list[list[int]]:
    """Token ids of answers as the model learns to write them: at most `max_target_tokens`, the last one
    the end-of-sequence token (T5's tokenizer appends </s> to a target; a decoder-only model gets its eos)."""
    if is_encoder_decoder:
        return tokenizer(text_target=targets, max_length=max_target_tokens, truncation=True)["input_ids"]
    answers = tokenizer(targets, add_special_tokens=False)["input_ids"]
    return [answer[: max_target_tokens - 1] + [tokenizer.eos_token_id] for answer in answers]


def prompt_padding_side(is_encoder_decoder: bool) -> str:
    """Decoder-only prompts are padded on the left, so every prompt ends where generation starts."""
    return "right" if is_encoder_decoder else "left"


def prompts_can_share_a_prefix(is_encoder_decoder: bool) -> bool:
    """Whether prompts that start alike can share the work of their common start.

    A decoder-only model reads left to right: the keys and values of a prompt's first tokens
    depend on those tokens alone, so a start that every prompt of a batch shares (the chat
    template's system turn, the instruction, few-shot examples) is computed once and serves the
    whole batch. An encoder reads its whole input at once, every position seeing every other:
    nothing of it can be shared.
    """
    return not is_encoder_decoder


def training_padding_side(is_encoder_decoder: bool, soft_prompt: bool) -> str:
    """Decoder-only training batches are padded on the left, so every answer ends at the last column
    and `answer_loss` needs the LM head only there. A row's positions then start later, which
    rotary positions (Llama, SmolLM2) do not see: attention depends on distances only. Except with
    a soft prompt: PEFT ignores position ids for prompt tuning, so a left-padded row would read its
    text further from the soft prompt than it does unpadded. Those, and encoder-decoders, pad right.
    """
    return "left" if not is_encoder_decoder and not soft_prompt else "right"


def generated_answer(generated: torch.Tensor, prompt_length: int, is_encoder_decoder: bool) -> torch.Tensor:
    """The answer's tokens in what `generate` returned for a batch of prompts `prompt_length` wide.

    An encoder-decoder's output starts with the decoder start token; a decoder-only output
    repeats the prompt first (give prompt_length 0 when the prompt went in as embeddings).
    """
    return generated[:, 1:] if is_encoder_decoder else generated[:, prompt_length:]


def answer_logits_and_hidden(
    model: torch.nn.Module,
    is_encoder_decoder: bool,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    decoder_start_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each response token and the last hidden state at that position.

    Position t of both outputs is where the model, having read the query and response[:t],
    predicts response[t].
    - encoder-decoder: the encoder reads the query; the decoder reads [start] + response[:-1].
    - decoder-only: the model reads the left-padded query followed by the right-padded
      response; the logits at query_length - 1 + t predict response[t]. The LM head runs only
      on those positions (`logits_to_keep`): the prompt is most of the sequence.
    """
    if is_encoder_decoder:
        start = torch.full_like(response_ids[:, :1], decoder_start_token_id)
        decoder_input_ids = torch.cat([start, response_ids[:, :-1]], dim=1)
        decoder_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
        output = model(
            input_ids=query_ids,
            attention_mask=query_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_mask,
            output_hidden_states=True,
        )
        return output.logits, output.decoder_hidden_states[-1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    # Positions count real tokens only, so a left-padded prompt sits where it would unpadded
    # (rotary-position models such as Llama give the same logits either way; absolute-position ones do not).
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    length = response_ids.shape[1]
    output = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True,
        logits_to_keep=length + 1,  # the last length + 1 positions; the very last predicts past the response
    )
    first = query_ids.shape[1] - 1
    return output.logits[:, :length], output.hidden_states[-1][:, first : first + length]


def next_token_logits(model: torch.nn.Module, encoded: dict, is_encoder_decoder: bool) -> torch.Tensor:
    """Logits over the vocabulary for the first token the model would write after one encoded prompt."""
    if is_encoder_decoder:
        start = torch.tensor([[model.config.decoder_start_token_id]], device=model.device)
        return model(**encoded, decoder_input_ids=start).logits[0, -1]
    return model(**encoded).logits[0, -1]


def answer_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens, the LM head computed only where labels are.

    An encoder-decoder's decoder only reads the answer, so its own loss already does that. A
    decoder-only model reads the prompt too, and the prompt is most of each sequence: its logits
    (vocabulary-wide, at every position) are the LM head's largest cost and would be thrown away.
    Here they are computed from the column of the first label on (`logits_to_keep`); with
    examples padded on the left (utils.data.training_collator) every answer ends at the last
    column, so that is the answer's length. The loss equals the model's own (tested).
    """
    if model.config.is_encoder_decoder:
        return model(**batch).loss
    labels = batch["labels"]
    labelled_columns = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    first = max(int(labelled_columns[0]) if len(labelled_columns) else 1, 1)  # column 0 is never predicted
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, logits_to_keep=labels.shape[1] - first + 1).logits[:, :-1]  # predict columns first..
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels[:, first:].reshape(-1), ignore_index=IGNORE_INDEX
    )
