"""Batched generation for both model families, each generation done once.

`reuse_generations_in(folder)` (the notebooks' `course.start` calls it with the profile's runs
folder) keeps the token ids of every generation there, under the fingerprint of what produced
them: the model's weights and adapter switches (utils.models.weights_fingerprint), the
tokenizer, the prompts, every generation setting, the batch size, the library versions and the
machine's threads and CPU kind, and for sampling the random generator's state. The same
generation asked for again (notebook 03 scoring the base model that 02 scored, 08 sampling
the summarizer that 06 sampled) is read back instead of computed, and leaves the random
generator where generating would have left it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils import families
from utils.adapters import has_soft_prompt
from utils.families import generated_answer, prompt_padding_side, prompts_can_share_a_prefix
from utils.models import inference_copy, weights_fingerprint
from utils.plumbing.out_of_memory import explained_out_of_memory
from utils.plumbing.reuse import keep_for_reuse, reused
from utils.plumbing.run_state import fingerprint
from utils.prompts import encode

_reuse_folder: Path | None = None  # where generations are kept for reuse; None: always generate
# Part of every reuse fingerprint: bump it when a change here can change what is generated.
GENERATION_CODE_VERSION = 2
# A common start shorter than this is not worth its own forward pass (a chat template's system turn is longer).
MIN_SHARED_PREFIX_TOKENS = 16


def reuse_generations_in(folder: Path | None) -> None:
    """Keep every generation in `folder` and read it back when asked for again (None: generate every time)."""
    global _reuse_folder
    _reuse_folder = None if folder is None else Path(folder)


def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 60,
    progress: bool = True,
    description: str = "Generating",
    share_prompt_start: bool = True,
    precision: str | None = None,
    **generation_kwargs,
) -> list[list[int]]:
    """The new token ids of one continuation per prompt, in the prompts' order, up to (without) the end token.

    Prompts are sorted by length so each batch pads little; decoder-only models are padded
    on the left so every prompt ends right where generation starts, and the start that all
    prompts of a batch share (the chat template and instruction, few-shot examples) is read once
    for the batch (`shared_prefix_inputs`; `share_prompt_start=False` reads every prompt whole),
    with the same greedy output. `precision` "bfloat16" generates from a copy of the model in bf16
    (`utils.models.inference_copy`: faster where the hardware computes bf16 natively; greedy
    outputs may differ from float32's by rounding); None generates from `model` as it is. Greedy unless
    `generation_kwargs` say otherwise (do_sample=True...). A model with a soft prompt (PEFT
    prompt tuning) gets it prepended as embeddings, see `soft_prompt_inputs`.
    """
    if not prompts:
        return []
    generation_kwargs.setdefault("do_sample", False)
    generation_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    if _reuse_folder is None:
        return _generate_ids(inference_copy(model, precision), tokenizer, prompts, batch_size, max_new_tokens,
                             progress, description, share_prompt_start, generation_kwargs)
    key = generation_fingerprint(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 share_prompt_start=share_prompt_start, precision=precision, **generation_kwargs)
    record = reused(_reuse_folder, key)
    if record is not None:
        if progress:
            print(f"{description}: {len(prompts)} generations reused (same weights, prompts and settings as before)")
        if record["random_state_after"] is not None:
            _set_random_state(record["random_state_after"])
        return record["token_ids"]
    outputs = _generate_ids(inference_copy(model, precision), tokenizer, prompts, batch_size, max_new_tokens,
                            progress, description, share_prompt_start, generation_kwargs)
    keep_for_reuse(_reuse_folder, key, {
        "description": description, "prompts": len(prompts), "token_ids": outputs,
        "random_state_after": _random_state(model) if generation_kwargs["do_sample"] else None,
    })
    return outputs


@explained_out_of_memory("generating")
def _generate_ids(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, progress: bool,
                  description: str, share_prompt_start: bool, generation_kwargs: dict) -> list[list[int]]:
    is_encoder_decoder = model.config.is_encoder_decoder
    token_ids = encode(tokenizer, prompts, is_encoder_decoder)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(token_ids[i]))
    share = (share_prompt_start and prompts_can_share_a_prefix(is_encoder_decoder) and not has_soft_prompt(model)
             and not {"past_key_values", "cache_implementation"} & set(generation_kwargs))
    outputs: list[list[int]] = [[] for _ in prompts]
    stop_ids = end_of_sequence_ids(model, tokenizer)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = prompt_padding_side(is_encoder_decoder)
    was_training = model.training
    model.eval()
    try:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=description, disable=not progress):
            shared = shared_prefix_inputs([token_ids[i] for i in batch], tokenizer.pad_token_id) if share else None
            encoded = encode(
                tokenizer, [prompts[i] for i in batch], is_encoder_decoder, return_tensors="pt", padding=True
            ).to(model.device)
            with torch.no_grad():
                if shared is not None:
                    input_ids, attention_mask, prefix_length = shared
                    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
                    cache = prefix_cache(model, input_ids[:1, :prefix_length], len(batch))
                    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                                               max_new_tokens=max_new_tokens, **generation_kwargs)
                    prompt_length = input_ids.shape[1]
                elif has_soft_prompt(model):
                    # The prompt goes in as embeddings: no prompt tokens come back.
                    generated = model.get_base_model().generate(
                        **soft_prompt_inputs(model, encoded["input_ids"], encoded["attention_mask"]),
                        max_new_tokens=max_new_tokens, **generation_kwargs,
                    )
                    prompt_length = 0
                else:
                    generated = model.generate(**encoded, max_new_tokens=max_new_tokens, **generation_kwargs)
                    prompt_length = encoded["input_ids"].shape[1]
            generated = generated_answer(generated, prompt_length, is_encoder_decoder)
            for index, row in zip(batch, generated.tolist()):
                outputs[index] = _until_end(row, stop_ids)
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return outputs


def shared_prefix_inputs(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(input_ids, attention_mask, prefix length) for prompts whose common start is read once, or None.

    Each row is the common prefix, then padding, then the rest of its prompt: the prompts still
    end together where generation starts, the padding in the middle is masked, and positions
    count real tokens only (transformers derives them from the mask). None when the batch has one
    prompt or its common start is shorter than MIN_SHARED_PREFIX_TOKENS.
    """
    if len(rows) < 2:
        return None
    shortest = min(len(row) for row in rows)
    prefix = 0
    while prefix < shortest - 1 and all(row[prefix] == rows[0][prefix] for row in rows):
        prefix += 1  # at least one token of each prompt stays after the prefix: it is read with the batch
    if prefix < MIN_SHARED_PREFIX_TOKENS:
        return None
    rests = [row[prefix:] for row in rows]
    width = max(len(rest) for rest in rests)
    input_ids = [rows[0][:prefix] + [pad_token_id] * (width - len(rest)) + rest for rest in rests]
    mask = [[1] * prefix + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
    return torch.tensor(input_ids), torch.tensor(mask), prefix


def prefix_cache(model: PreTrainedModel, prefix_ids: torch.Tensor, batch_size: int):
    """The key/value cache of one prefix (a 1 x length tensor), read once and repeated for `batch_size` prompts."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=prefix_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(batch_size)
    return cache


def generation_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                           **settings) -> str:
    """What makes two generations the same: model, tokenizer, prompts, settings, libraries, machine, random state."""
    tokenizer_identity = [type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer),
                          tokenizer.special_tokens_map, tokenizer.chat_template]
    machine = {"code": GENERATION_CODE_VERSION, "device": str(model.device), "autocast": torch.is_autocast_enabled(model.device.type),
               "threads": torch.get_num_threads(),
               "cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
               "transformers": transformers.__version__, "peft": peft.__version__}
    random_state = None
    if settings.get("do_sample"):  # sampling draws from the global generator: its state is an input
        random_state = hashlib.sha256(json.dumps(_random_state(model)).encode()).hexdigest()
    identity = json.dumps([weights_fingerprint(model), has_soft_prompt(model), tokenizer_identity, random_state],
                          default=str)
    return fingerprint({**settings, **machine}, identity, prompts)


def _random_state(model: torch.nn.Module) -> dict:
    state = {"cpu": torch.get_rng_state().tolist()}
    if model.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(model.device).tolist()
    return state


def _set_random_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["cpu"], dtype=torch.uint8))
    if "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], **options) -> list[str]:
    """Generate one text per prompt, in the prompts' order: `generate_ids` (same options), decoded."""
    return decode_generations(tokenizer, generate_ids(model, tokenizer, prompts, **options))


def decode_generations(tokenizer: PreTrainedTokenizerBase, token_ids: list[list[int]]) -> list[str]:
    """The texts of `generate_ids`' continuations, as `generate` returns them."""
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in token_ids]


def end_of_sequence_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a response: the generation config's and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def _until_end(ids: list[int], stop_ids: list[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
    return ids


def soft_prompt_inputs(model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """inputs_embeds and attention_mask for the base model: the soft prompt, then the embedded input.

    The same inputs PEFT builds in its forward pass (the soft prompt before everything, padding
    included). Generation goes through the base model's own `generate` with them, not through
    PEFT's: PEFT's generation hook finds the cache by the name `past_key_values`, which
    transformers 5.24 renamed to `cache`, and then prepends the soft prompt at every decoding
    step (docs/RESULTS.md, "Prompt tuning under transformers 5.24").
    """
    prompt = model.get_prompt(batch_size=input_ids.shape[0])
    embedded = model.get_input_embeddings()(input_ids)
    prompt_mask = torch.ones(prompt.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
    return {
        "inputs_embeds": torch.cat([prompt.to(embedded.dtype), embedded], dim=1),
        "attention_mask": torch.cat([prompt_mask, attention_mask], dim=1),
    }


def next_token_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    """Logits over the vocabulary for the first token the model would write after `prompt`."""
    is_encoder_decoder = model.config.is_encoder_decoder
    encoded = encode(tokenizer, [prompt], is_encoder_decoder, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return families.next_token_logits(model, encoded, is_encoder_decoder).float()


def sampling_distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Probabilities the sampler draws from, after transformers' own temperature / top-k / top-p warpers."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = logits.unsqueeze(0).clone()
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p:
        warpers.append(TopPLogitsWarper(top_p))
    for warper in warpers:
        scores = warper(None, scores)
    return torch.softmax(scores, dim=-1)[0]
