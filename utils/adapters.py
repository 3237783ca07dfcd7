"""Parameter-efficient fine-tuning with PEFT: LoRA adapters on the attention projections."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

# Query and value projections, by architecture: the one place the model families differ here.
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


def task_type(model: PreTrainedModel) -> TaskType:
    return TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM


def lora_config(model: PreTrainedModel, rank: int = 16, alpha: int | None = None, dropout: float = 0.05) -> LoraConfig:
    """LoRA of rank `rank` on the query and value projections (alpha defaults to 2 x rank)."""
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=attention_targets(model),
        task_type=task_type(model),
    )


def add_lora(model: PreTrainedModel, rank: int = 16, alpha: int | None = None, adapter_name: str = "default") -> PeftModel:
    """Freeze `model` and attach a trainable LoRA adapter; returns the PEFT wrapper."""
    return get_peft_model(model, lora_config(model, rank, alpha), adapter_name=adapter_name)
