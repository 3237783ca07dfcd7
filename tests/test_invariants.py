"""Exact invariants of the course's generation, on models whose greedy output depends on their input.

A library release can break us without any error: under transformers 5.24.0, PEFT's `generate`
prepends the soft prompt at every decoding step and notebook 04 writes garbage. The tiny random
models of the tests cannot show that, because they repeat one token whatever they read. So these
checks run on the real offline model (SmolLM2-135M-Instruct, about a minute) and on the tiny
models with their random weights scaled up until the greedy output follows the input; the first
test of each model proves that it does. `make upgrade` runs them before a new lock lands.

Each invariant is an equality of greedy token ids that holds by construction:
- a fresh LoRA adapter adds B @ A with B = 0;
- merging puts the same B @ A into the weights;
- a soft prompt initialised from a text holds exactly that text's token embeddings;
- the PPO reference is the same network with its adapter switched off;
- padding a batch changes no prompt's continuation;
and for 4-bit weights, the share of next tokens that agree with fp32 stays above a floor.
"""

from __future__ import annotations

import copy

import pytest
import torch

from utils.adapters import add_lora, add_prompt_tuning
from utils.data import load_dialogues, prompts_for
from utils.generation import end_of_sequence_ids, generate_ids
from utils.models import load_model_and_tokenizer
from utils.ppo import PolicyWithValueHead
from utils.profiles import get_profile
from utils.prompts import SOFT_PROMPT_INIT_TEXT, encode

NEW_TOKENS = 12
PROMPTS = 3
# Measured on the offline model (bundled test dialogues 0-2, fp32's 12 greedy tokens each, teacher
# forced): NF4 picks the same next token 24 times of 36 (0.67) with transformers 5.23.0 and 5.24.0,
# bitsandbytes 0.50.2. Broken dequantization picks almost none.
NF4_AGREEMENT_FLOOR = 0.5


def scale_up_random_weights(model: torch.nn.Module, gain: float = 3.0, seed: int = 0) -> None:
    """Redraw every matrix with std gain / sqrt(fan_in): outputs then depend on the input (tiny models)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                noise = torch.randn(parameter.shape, generator=generator) * gain / parameter.shape[-1] ** 0.5
                parameter.copy_(noise)


@pytest.fixture(scope="module", params=["tiny", "tiny-causal", pytest.param("offline", marks=pytest.mark.offline_model)])
def course_model(request):
    """(profile, model, tokenizer, prompts): a model whose greedy output depends on its input."""
    profile = get_profile(request.param)
    model, tokenizer = load_model_and_tokenizer(profile)
    if request.param != "offline":
        scale_up_random_weights(model)
    dialogues = [row["dialogue"] for row in load_dialogues("bundled")["test"]][:PROMPTS]
    return profile, model.eval(), tokenizer, prompts_for(dialogues, tokenizer, profile)


def greedy(model, tokenizer, prompts, batch_size=1) -> list[list[int]]:
    """The course's generation (utils.generation), greedy, NEW_TOKENS at most, as token ids."""
    return generate_ids(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=NEW_TOKENS, progress=False)


def reference_greedy(model, tokenizer, token_ids: list[list[int]]) -> list[list[int]]:
    """Plain transformers `generate` on explicit token ids, one at a time: the oracle."""
    stop = end_of_sequence_ids(model, tokenizer)
    outputs = []
    for ids in token_ids:
        input_ids = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = generated[0, 1:] if model.config.is_encoder_decoder else generated[0, input_ids.shape[1]:]
        new = new.tolist()
        outputs.append(new[: next((i for i, t in enumerate(new) if t in stop), len(new))])
    return outputs


def with_trained_looking_lora(model, seed: int = 1):
    """A LoRA copy of `model` whose B matrices are non-zero, as after training."""
    adapted = add_lora(copy.deepcopy(model), rank=4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return adapted.eval()


def test_the_greedy_output_depends_on_the_input(course_model):
    profile, model, tokenizer, prompts = course_model
    outputs = greedy(model, tokenizer, prompts)

    assert len({tuple(o) for o in outputs}) == len(prompts), outputs
    assert max(len(set(o)) for o in outputs) > 2, outputs


def test_a_fresh_lora_adapter_generates_exactly_what_the_base_model_does(course_model):
    profile, model, tokenizer, prompts = course_model
    adapted = add_lora(copy.deepcopy(model), rank=profile.lora_rank).eval()

    assert greedy(adapted, tokenizer, prompts) == greedy(model, tokenizer, prompts)


def test_a_lora_adapter_with_weights_changes_the_output(course_model):
    """The check above can fail: non-zero B matrices change what the model writes."""
    profile, model, tokenizer, prompts = course_model

    assert greedy(with_trained_looking_lora(model), tokenizer, prompts) != greedy(model, tokenizer, prompts)


def test_a_merged_lora_generates_exactly_what_the_unmerged_one_does(course_model):
    profile, model, tokenizer, prompts = course_model
    adapted = with_trained_looking_lora(model)
    unmerged = greedy(adapted, tokenizer, prompts)
    merged = adapted.merge_and_unload().eval()

    assert greedy(merged, tokenizer, prompts) == unmerged


def test_a_soft_prompt_from_text_generates_what_the_base_model_does_with_that_text_first(course_model):
    profile, model, tokenizer, prompts = course_model
    text_ids = tokenizer(SOFT_PROMPT_INIT_TEXT)["input_ids"]
    tuned = add_prompt_tuning(copy.deepcopy(model), tokenizer, num_virtual_tokens=len(text_ids),
                              init_text=SOFT_PROMPT_INIT_TEXT).eval()
    prompt_ids = encode(tokenizer, prompts, model.config.is_encoder_decoder)["input_ids"]

    expected = reference_greedy(model, tokenizer, [text_ids + ids for ids in prompt_ids])

    assert greedy(tuned, tokenizer, prompts) == expected
    assert greedy(tuned, tokenizer, prompts, batch_size=PROMPTS) == expected


def test_the_ppo_reference_generates_and_scores_exactly_as_the_summarizer(course_model):
    profile, model, tokenizer, prompts = course_model
    policy = PolicyWithValueHead(with_trained_looking_lora(model))
    summarizer_output = greedy(model, tokenizer, prompts)

    assert greedy(policy.model, tokenizer, prompts) != summarizer_output  # the adapter is on
    with policy.model.disable_adapter():
        assert greedy(policy.model, tokenizer, prompts) == summarizer_output

    query = encode(tokenizer, prompts[:1], model.config.is_encoder_decoder, return_tensors="pt")
    response = torch.tensor([summarizer_output[0] or [tokenizer.eos_token_id]])
    response_mask = torch.ones_like(response)
    summarizer_policy = PolicyWithValueHead(add_lora(copy.deepcopy(model), rank=4))  # B = 0: the summarizer
    expected = summarizer_policy.reference_logprobs(query["input_ids"], query["attention_mask"], response, response_mask)
    actual = policy.reference_logprobs(query["input_ids"], query["attention_mask"], response, response_mask)
    assert torch.equal(actual, expected)


def test_a_batched_greedy_generation_equals_one_prompt_at_a_time(course_model):
    profile, model, tokenizer, prompts = course_model
    lengths = [len(ids) for ids in encode(tokenizer, prompts, model.config.is_encoder_decoder)["input_ids"]]
    assert len(set(lengths)) > 1, "the prompts must differ in length, so the batch is padded"

    assert greedy(model, tokenizer, prompts, batch_size=PROMPTS) == greedy(model, tokenizer, prompts)


def next_token_agreement(model, tokenizer, prompts, continuations) -> tuple[int, int]:
    """(agreeing, total): how often `model`'s top next token equals the continuation's, given its prefix."""
    agreeing = total = 0
    prompt_ids = encode(tokenizer, prompts, model.config.is_encoder_decoder)["input_ids"]
    for ids, continuation in zip(prompt_ids, continuations):
        sequence = torch.tensor([ids + continuation], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=sequence).logits[0, len(ids) - 1 : -1]
        agreeing += int((logits.argmax(dim=-1).cpu() == torch.tensor(continuation)).sum())
        total += len(continuation)
    return agreeing, total


@pytest.mark.offline_model
def test_the_4bit_model_agrees_with_fp32_on_most_next_tokens():
    """Teacher-forced: given fp32's greedy text so far, does NF4 pick the same next token?"""
    from utils.quantization import QuantizationUnavailable, load_4bit_model

    profile = get_profile("offline")
    model, tokenizer = load_model_and_tokenizer(profile)
    dialogues = [row["dialogue"] for row in load_dialogues("bundled")["test"]][:PROMPTS]
    prompts = prompts_for(dialogues, tokenizer, profile)
    try:
        quantized = load_4bit_model(profile).eval()
    except QuantizationUnavailable as problem:
        pytest.skip(str(problem))
    continuations = greedy(model, tokenizer, prompts)

    assert next_token_agreement(model, tokenizer, prompts, continuations) == (sum(map(len, continuations)),) * 2
    agreeing, total = next_token_agreement(quantized, tokenizer, prompts, continuations)
    print(f"NF4 picks fp32's next token {agreeing} times of {total} ({agreeing / total:.2f})")
    assert agreeing / total >= NF4_AGREEMENT_FLOOR
