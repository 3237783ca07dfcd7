"""Training few parameters: LoRA adapters (on the attention projections or on every linear layer) and
soft prompts with PEFT, and feature extraction (only the last block trains, the rest is frozen)."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, PeftType, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.families import last_layers, peft_task_type

# Query and value projections, by architecture: their module names differ per architecture, not per family.
ATTENTION_QUERY_VALUE = {
    "t5": ["q", "v"],
    "llama": ["q_proj", "v_proj"],
}


def attention_targets(model: PreTrainedModel) -> list[str]:
    """Names of the query and value projection modules of `model`'s architecture."""
    model_type = model.config.model_type
    if model_type not in ATTENTION_QUERY_VALUE:
        raise ValueError(f"No LoRA targets known for architecture {model_type!r}; add it to ATTENTION_QUERY_VALUE.")
    return ATTENTION_QUERY_VALUE[model_type]


# Where LoRA goes: the query and value projections (the LoRA paper's choice, notebook 03), or every
# linear layer but the output head (the QLoRA paper's, needed there to match 16-bit fine-tuning).
LORA_TARGETS = ("attention", "all-linear")
LAB_LORA_DROPOUT = 0.05  # the original lab's; profiles set their own (`Profile.lora_dropout`)


def has_soft_prompt(model: torch.nn.Module) -> bool:
    """True for a PEFT model whose active adapter is a soft prompt (prompt tuning, P-tuning)."""
    config = getattr(model, "active_peft_config", None)
    return config is not None and config.peft_type in (PeftType.PROMPT_TUNING, PeftType.P_TUNING)


def task_type(model: PreTrainedModel) -> TaskType:
    return peft_task_type(model.config.is_encoder_decoder)


def lora_config(
    model: PreTrainedModel, rank: int = 16, alpha: int | None = None, dropout: float = LAB_LORA_DROPOUT,
    targets: str = "attention",
) -> LoraConfig:
    """LoRA of rank `rank` on `targets` (see LORA_TARGETS); alpha defaults to 2 x rank."""
    if targets not in LORA_TARGETS:
        raise ValueError(f"Unknown LoRA targets {targets!r}; choose from {', '.join(LORA_TARGETS)}.")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=attention_targets(model) if targets == "attention" else "all-linear",
        task_type=task_type(model),
    )


ADAPTER_SEED = 42  # every adapter starts from the same random draw, wherever it is made


def _seeded_peft_model(model: PreTrainedModel, config, adapter_name: str, seed: int) -> PeftModel:
    """get_peft_model with the adapter's random start drawn from `seed`, leaving the process's generators as they were.

    Otherwise the start depends on what the process drew before (a notebook's earlier cells, the
    methods a benchmark trained first), and a checkpoint reused by fingerprint from one context
    would not be the one another context trains.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config, adapter_name=adapter_name)


FEATURE_EXTRACTION_BLOCKS = 1  # the course's feature extraction trains the last block (and the final norm)


def train_last_blocks_only(model: PreTrainedModel, blocks: int = FEATURE_EXTRACTION_BLOCKS) -> PreTrainedModel:
    """Feature extraction: freeze `model` except its last `blocks` blocks and final norm (in place).

    The frozen layers then act as a fixed feature extractor and only the top of the network
    learns; unlike LoRA, the trained weights are the model's own, so nothing is added.
    """
    model.requires_grad_(False)
    for module in last_layers(model, model.config.is_encoder_decoder, blocks):
        module.requires_grad_(True)
    return model


def add_lora(
    model: PreTrainedModel, rank: int = 16, alpha: int | None = None, adapter_name: str = "default",
    targets: str = "attention", seed: int = ADAPTER_SEED, dropout: float = LAB_LORA_DROPOUT,
) -> PeftModel:
    """Freeze `model` and attach a trainable LoRA adapter on `targets` (its A matrices drawn from `seed`).

    `dropout` zeroes that share of the adapter's input while training (the notebooks pass the
    profile's `lora_dropout`); evaluation, PPO and DPO run without it.
    """
    return _seeded_peft_model(model, lora_config(model, rank, alpha, dropout, targets), adapter_name, seed)


def lora_identity(model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> dict:
    """What makes two LoRA policies the same before training: the base model's name, the adapter's
    shape (rank, alpha, targets) and the tokenizer's name; PPO, DPO and GRPO fingerprint their runs with it."""
    adapter = model.peft_config[model.active_adapter]
    targets = adapter.target_modules
    return {
        "model": model.get_base_model().config.name_or_path,
        "adapter": {"r": adapter.r, "alpha": adapter.lora_alpha,
                    "targets": targets if isinstance(targets, str) else sorted(targets)},
        "tokenizer": tokenizer.name_or_path,
    }


def prompt_tuning_config(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, num_virtual_tokens: int = 20,
    init_text: str | None = None,
) -> PromptTuningConfig:
    """Soft prompt of `num_virtual_tokens` trainable embeddings, started from `init_text`'s tokens or at random.

    One soft prompt, before the input, in both families (Lester et al.'s prompt tuning). PEFT's
    default for encoder-decoders also prepends a second one to the decoder's input in training,
    which its `generate` then leaves out: the model would be scored without what it learned.
    """
    return PromptTuningConfig(
        task_type=task_type(model),
        num_virtual_tokens=num_virtual_tokens,
        num_transformer_submodules=1,
        prompt_tuning_init=PromptTuningInit.TEXT if init_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=init_text or None,
        tokenizer_name_or_path=tokenizer.name_or_path if init_text else None,
    )


def add_prompt_tuning(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_virtual_tokens: int = 20,
    init_text: str | None = None,
    adapter_name: str = "default",
    seed: int = ADAPTER_SEED,
) -> PeftModel:
    """Freeze `model` and prepend a trainable soft prompt to every input (a random start drawn from `seed`)."""
    config = prompt_tuning_config(model, tokenizer, num_virtual_tokens, init_text)
    return _seeded_peft_model(model, config, adapter_name, seed)

def soft_prompt(model: PeftModel, adapter_name: str = "default") -> torch.Tensor:
    """The learned virtual-token embeddings, one row per virtual token."""
    return model.prompt_encoder[adapter_name].embedding.weight.detach()


def nearest_tokens(model: PeftModel, tokenizer: PreTrainedTokenizerBase, k: int = 3,
                   adapter_name: str = "default") -> list[list[str]]:
    """For each virtual token, the `k` vocabulary tokens whose input embeddings are closest by cosine similarity."""
    prompt = torch.nn.functional.normalize(soft_prompt(model, adapter_name).float(), dim=-1)
    vocabulary = torch.nn.functional.normalize(model.get_input_embeddings().weight.detach().float(), dim=-1)
    closest = (prompt @ vocabulary.T).topk(k, dim=-1).indices
    return [[tokenizer.decode([int(i)]) for i in row] for row in closest]


def method_record(scores: dict, training, model: torch.nn.Module, **extra) -> dict:
    """What a notebook records for a method it trained: `run.record(method, **method_record(...))`.

    Its scores, its trainable parameters and the base model's (an adapter's own weights are not
    counted in the total), what the training took (`training` is a utils.training.TrainingRun) and
    `extra` fields such as the rank or the bytes saved.
    """
    from utils.models import count_parameters  # utils.models imports this module

    trainable, total = count_parameters(model)
    base = total - trainable if hasattr(model, "peft_config") else total
    return {**scores, "trainable_params": trainable, "total_params": base, "train_seconds": training.train_seconds,
            "tokens_per_second": training.tokens_per_second, "peak_memory_mb": training.peak_memory_mb, **extra}
