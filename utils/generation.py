"""Batched generation for both model families."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.prompts import encode


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 60,
    progress: bool = True,
    description: str = "Generating",
    **generation_kwargs,
) -> list[str]:
    """Generate one text per prompt, in the prompts' order.

    Prompts are sorted by length so each batch pads little; decoder-only models are padded
    on the left so every prompt ends right where generation starts, and only the new
    tokens are decoded. Greedy unless `generation_kwargs` say otherwise (do_sample=True...).
    """
    if not prompts:
        return []
    is_encoder_decoder = model.config.is_encoder_decoder
    lengths = [len(ids) for ids in encode(tokenizer, prompts, is_encoder_decoder)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    generation_kwargs.setdefault("do_sample", False)
    generation_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "right" if is_encoder_decoder else "left"
    was_training = model.training
    model.eval()
    try:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=description, disable=not progress):
            encoded = encode(
                tokenizer, [prompts[i] for i in batch], is_encoder_decoder, return_tensors="pt", padding=True
            ).to(model.device)
            with torch.no_grad():
                generated = model.generate(**encoded, max_new_tokens=max_new_tokens, **generation_kwargs)
            if not is_encoder_decoder:
                generated = generated[:, encoded["input_ids"].shape[1] :]
            for index, text in zip(batch, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[index] = text.strip()
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return outputs


def next_token_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    """Logits over the vocabulary for the first token the model would write after `prompt`."""
    is_encoder_decoder = model.config.is_encoder_decoder
    encoded = encode(tokenizer, [prompt], is_encoder_decoder, return_tensors="pt").to(model.device)
    with torch.no_grad():
        if is_encoder_decoder:
            start = torch.tensor([[model.config.decoder_start_token_id]], device=model.device)
            logits = model(**encoded, decoder_input_ids=start).logits
        else:
            logits = model(**encoded).logits
    return logits[0, -1].float()


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
