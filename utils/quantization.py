"""QLoRA: a base model stored in 4-bit NF4 with bitsandbytes, LoRA trained on top.

bitsandbytes runs 4-bit on CUDA and, from version 0.46, on the CPU too. On both the weights are
stored packed, 4 bits each with their block scales; for every matrix product in training a layer is
dequantized to the compute dtype, multiplied and dropped (fused 4-bit kernels serve only small
batches, on CUDA). Paged optimizers and gradient checkpointing are used where they help: on CUDA.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, PreTrainedModel

from utils.adapters import add_lora
from utils.models import load_model, resolve_device, resolve_dtype
from utils.profiles import Profile

MINIMUM_BITSANDBYTES = (0, 46)

# Bits per weight of the number formats the notebook compares (NF4 adds a little for block scales).
FORMAT_BITS = {"float32": 32, "bfloat16": 16, "int8": 8, "nf4": 4}


class QuantizationUnavailable(RuntimeError):
    """4-bit loading cannot work on this machine."""


def bitsandbytes_problem(device: torch.device) -> str | None:
    """Why 4-bit NF4 cannot run here, in one sentence with what to do; None when it can."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed: run `pip install 'bitsandbytes>=0.46'` (or `make run`, which installs it)."
    version = importlib.metadata.version("bitsandbytes")
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if device.type == "cpu" and numbers < MINIMUM_BITSANDBYTES:
        return f"bitsandbytes {version} has no CPU 4-bit kernels: upgrade to >= 0.46, or use a CUDA GPU."
    try:
        import bitsandbytes.functional as functional

        functional.quantize_4bit(torch.ones(64, device=device), quant_type="nf4")
    except Exception as error:  # the library's own message says what is missing
        return f"bitsandbytes cannot quantize on {device.type} here ({type(error).__name__}: {error}); use a CUDA GPU or the LoRA notebook instead."
    return None


def nf4_config(compute_dtype: torch.dtype, double_quantization: bool = True) -> BitsAndBytesConfig:
    """Weights stored as 4-bit NormalFloat in blocks of 64; matrix products computed in `compute_dtype`."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quantization,  # the block scales are quantized too (8-bit)
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_4bit_model(profile: Profile, double_quantization: bool = True,
                    config: BitsAndBytesConfig | None = None) -> PreTrainedModel:
    """The profile's model with its linear layers quantized while loading: to NF4 (`nf4_config` with
    the profile's compute dtype), or as `config` says. On CPUs the layers keep the layout training needs."""
    device = resolve_device(profile)
    problem = bitsandbytes_problem(device)
    if problem:
        raise QuantizationUnavailable(problem)
    config = config or nf4_config(resolve_dtype(profile), double_quantization)
    model = load_model(profile, quantization_config=config, device_map={"": (device.index or 0) if device.type == "cuda" else str(device)})
    keep_training_layout(model)
    return model


def linear_layers_kept_in_full_precision(model: PreTrainedModel) -> dict[str, str]:
    """The linear layers a 4-bit load left unquantized, by kind (the name's last part), each with why.

    transformers leaves out the output head (and any layer tied to the embeddings), and every layer
    the model's class names in `_keep_in_fp32_modules`: T5's feed-forward output projections `wo`,
    whose activations overflow in 16 bits. Llama-style models keep only their head.
    """
    import bitsandbytes as bnb

    kept_in_fp32 = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not isinstance(module, bnb.nn.Linear4bit):
            kind = name.split(".")[-1]
            kinds[kind] = ("the model class keeps it in float32 (_keep_in_fp32_modules)" if kind in kept_in_fp32
                           else "the output head: transformers never quantizes it")
    return kinds


def keep_training_layout(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its bf16 inference kernel on AVX512-BF16 CPUs.

    On such CPUs the first forward pass in eval mode without gradients (an evaluation during
    training, a generation) repacks every 4-bit layer for good. Later training steps then run
    through that kernel, in bf16 and without autograd: the gradients through the frozen layers are
    lost, silently. With the repacking off, every machine takes one path: dequantize, then multiply
    in the compute dtype.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes' Linear4bit, in versions with that kernel
            module.support_avx512bf16_for_cpu = False


def uses_gradient_checkpointing(profile: Profile) -> bool:
    """Recompute activations in the backward pass on GPUs, where memory is the limit; on CPUs time is."""
    return resolve_device(profile).type == "cuda"


def add_qlora(model: PreTrainedModel, profile: Profile, rank: int = 16, targets: str = "all-linear") -> PeftModel:
    """Prepare a 4-bit model for training and attach LoRA.

    PEFT's `prepare_model_for_kbit_training` freezes every weight, casts those kept in 16 bits
    (embeddings, norms, the head) to float32 and, with gradient checkpointing (on CUDA here), makes
    the embeddings' output require gradients (re-entrant checkpointing passes no gradient back
    through a segment whose inputs need none, and the embeddings are frozen) and switches
    checkpointing on.

    LoRA goes on every linear layer by default, as in the QLoRA paper: the adapters then can
    correct the rounding error of every quantized matrix, not only the attention's query and value.
    """
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=uses_gradient_checkpointing(profile))
    return add_lora(model, rank=rank, targets=targets, dropout=profile.lora_dropout)


def qlora_training_overrides(profile: Profile) -> dict:
    """Trainer settings for QLoRA: paged 8-bit AdamW and gradient checkpointing on CUDA, plain AdamW on CPU."""
    if resolve_device(profile).type == "cuda":
        return {"optim": "paged_adamw_8bit", "activation_checkpointing": True}
    return {"optim": "adamw_torch", "activation_checkpointing": False}


def format_sizes(parameters: int) -> dict[str, float]:
    """Megabytes that `parameters` weights take in each number format (scales of NF4 not included)."""
    return {name: parameters * bits / 8 / 2**20 for name, bits in FORMAT_BITS.items()}


def nf4_round_trip_error(weight: torch.Tensor, double_quantization: bool = True) -> float:
    """Mean absolute error of quantizing a weight matrix to NF4 and back, relative to its mean absolute value."""
    import bitsandbytes.functional as functional

    weight = weight.detach().float().contiguous()
    packed, state = functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=double_quantization)
    restored = functional.dequantize_4bit(packed, state).float()
    return float((restored - weight).abs().mean() / weight.abs().mean())


def nf4_levels() -> torch.Tensor:
    """The 16 values a 4-bit NormalFloat can take, on the [-1, 1] scale of a block's largest weight."""
    import bitsandbytes.functional as functional

    return functional.get_4bit_type("nf4", device="cpu").float()
