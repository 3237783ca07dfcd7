"""`python -m utils export`: a finished run becomes files other tools load, and they summarize as the
course's in-memory model does.

The tiny profiles train for real (seconds) and round-trip through the transformers folder. The GGUF
round trip needs the real offline model (SmolLM2-135M-Instruct, marked offline_model): its LoRA
adapter gets random B matrices, so the exported weights differ from the original GGUF's, and a file
that copied the original tensors, or permuted the query and key rows wrongly, would give other logits.
"""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

import utils.apps.export
from utils.adapters import add_lora, add_prompt_tuning
from utils.apps.cli import USER_ERROR, main
from utils.apps.export import (
    EXPORT_RECORD,
    OLLAMA_CHATML_TEMPLATE,
    SMOLLM2_SYSTEM_PROMPT,
    modelfile,
    permute_for_gguf,
    write_gguf,
)
from utils.data import load_profile_data, prompts_for, tokenize_for_training
from utils.evaluation import summarize
from utils.generation import next_token_logits
from utils.models import load_model, load_model_and_tokenizer, smollm2_gguf_path
from utils.plumbing.files import runs_dir
from utils.plumbing.run_state import RunFolder
from utils.profiles import get_profile
from utils.prompts import model_input
from utils.training import train

FP32_LOGIT_TOLERANCE = 1e-3  # float32 weights, the adapter merged or not: rounding only
# float16 weights carry 11 significant bits: SmolLM2's logits (up to about 26) move by a few hundredths.
FP16_LOGIT_TOLERANCE = 0.1
GGUF_NEW_TOKENS = 24  # a short summary keeps the real model's test well under a minute


# --- helpers ---------------------------------------------------------------------------------


def export(*arguments):
    """`python -m utils export ARGUMENTS` through the command line's entry point; its exit code."""
    return main(["export", *map(str, arguments)])


def refusal(capsys) -> str:
    """The single `error: ...` line a refused command printed (no traceback, nothing on stdout)."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.out == "" and captured.err.startswith("error: "), captured
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


def trained(profile, method, learning_rate):
    """The in-memory model a notebook has after training `method` ("full" or "lora") on a few rows."""
    model, tokenizer = load_model_and_tokenizer(profile)
    if method == "lora":
        model = add_lora(model, rank=profile.lora_rank)
    data = load_profile_data(profile)
    train_set = tokenize_for_training(data["train"].select(range(8)), tokenizer, profile)
    eval_set = tokenize_for_training(data["validation"].select(range(4)), tokenizer, profile)
    name = "full" if method == "full" else f"lora-r{profile.lora_rank}"  # the notebooks' run names
    train(model, tokenizer, profile, name, train_set, eval_set, learning_rate=learning_rate)
    return model.eval(), tokenizer


def finished_run_folder(profile, name, model):
    """A finished run `name` of `profile` whose final weights (or adapter) are `model`'s, as train() leaves it."""
    folder = runs_dir(profile.run_name) / "checkpoints" / name
    run = RunFolder(folder, fingerprint="written by the test")
    run.claim()
    model.save_pretrained(folder / "final")
    run.finish({"history": []})
    return folder


def summaries_from_folder(folder, prompts, is_encoder_decoder):
    """(model, greedy summaries) read back from an exported folder, generating with its own settings only.

    Decoder-only: the text-generation pipeline. transformers 5 has no pipeline for encoder-decoders
    (text2text-generation was removed), so T5 loads with its Auto class and plain `generate`.
    """
    if not is_encoder_decoder:
        generator = pipeline("text-generation", model=str(folder))
        outputs = generator(prompts, return_full_text=False)
        return generator.model, [output[0]["generated_text"].strip() for output in outputs]
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    summaries = []
    for prompt in prompts:
        generated = model.generate(**tokenizer(prompt, return_tensors="pt"))
        summaries.append(tokenizer.decode(generated[0], skip_special_tokens=True).strip())
    return model, summaries


# --- the transformers folder (tiny profiles) -------------------------------------------------


# Full fine-tuning at 1e-3 writes non-empty summaries in four steps (at 1e-2 both tiny models learn
# to stop at once); the LoRA run uses the profile's rate, as notebook 03 does.
@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_exported_run_summarizes_as_the_model_that_trained_it(tiny_profile, method, tmp_path, monkeypatch,
                                                                 one_thread):
    monkeypatch.setenv("COURSE_PROFILE", tiny_profile.name)
    model, tokenizer = trained(tiny_profile, method, 1e-3 if method == "full" else tiny_profile.peft_learning_rate)
    dialogues = list(load_profile_data(tiny_profile)["test"]["dialogue"][:4])
    expected = summarize(model, tokenizer, tiny_profile, dialogues, progress=False)

    assert export(method, tmp_path / "export") == 0

    folder = tmp_path / "export"
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("adapter_*"))
    settings = json.loads((folder / "generation_config.json").read_text())
    assert settings["do_sample"] is False and settings["max_new_tokens"] == tiny_profile.max_new_tokens
    prompts = prompts_for(dialogues, tokenizer, tiny_profile)
    loaded, summaries = summaries_from_folder(folder, prompts, tiny_profile.is_encoder_decoder)
    assert summaries == expected
    theirs = next_token_logits(loaded, tokenizer, prompts[0])
    ours = next_token_logits(model, tokenizer, prompts[0])
    base = next_token_logits(load_model(tiny_profile), tokenizer, prompts[0])
    assert torch.allclose(theirs, ours, atol=FP32_LOGIT_TOLERANCE)
    assert (theirs - base).abs().max() > 10 * FP32_LOGIT_TOLERANCE  # the trained weights, not the base model's
    record = json.loads((folder / EXPORT_RECORD).read_text())
    assert record["weights"] == ("full" if method == "full" else "adapter merged") and record["gguf"] is None


def test_exporting_again_into_an_earlier_export_replaces_it(tmp_path, monkeypatch):
    profile = get_profile("tiny")
    monkeypatch.setenv("COURSE_PROFILE", profile.name)
    finished_run_folder(profile, "full", load_model(profile))
    assert export("full", tmp_path / "export") == 0
    (tmp_path / "export" / "stale.txt").write_text("from the first export")

    assert export("full", tmp_path / "export") == 0

    assert not (tmp_path / "export" / "stale.txt").exists()


# --- refusals: one line, exit code 2, nothing written ------------------------------------------


def test_gguf_of_the_encoder_decoder_is_refused_as_decoder_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    finished_run_folder(get_profile("tiny"), "full", load_model(get_profile("tiny")))

    assert export("full", tmp_path / "export", "--gguf") == USER_ERROR

    message = refusal(capsys)
    assert "GGUF is for the decoder-only" in message and "without --gguf" in message
    assert not (tmp_path / "export").exists()


def test_gguf_of_a_model_without_an_original_gguf_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "tiny-causal")

    assert export("full", tmp_path / "export", "--gguf") == USER_ERROR

    assert "COURSE_PROFILE=offline" in refusal(capsys)
    assert not (tmp_path / "export").exists()


def test_an_unknown_run_is_refused_naming_the_finished_runs(tmp_path, monkeypatch, capsys):
    profile = get_profile("tiny")
    monkeypatch.setenv("COURSE_PROFILE", profile.name)
    finished_run_folder(profile, "full", load_model(profile))

    assert export("lora", tmp_path / "export") == USER_ERROR

    message = refusal(capsys)
    assert "lora-r4" in message and "Finished runs there: full" in message


def test_a_run_that_has_not_finished_is_refused(tmp_path, monkeypatch, capsys):
    profile = get_profile("tiny")
    monkeypatch.setenv("COURSE_PROFILE", profile.name)
    RunFolder(runs_dir(profile.run_name) / "checkpoints" / "full", fingerprint="interrupted").claim()

    assert export("full", tmp_path / "export") == USER_ERROR

    assert "has not finished training" in refusal(capsys)


def test_a_soft_prompt_is_refused_since_no_weight_holds_it(tmp_path, monkeypatch, capsys):
    profile = get_profile("tiny-causal")
    monkeypatch.setenv("COURSE_PROFILE", profile.name)
    model, tokenizer = load_model_and_tokenizer(profile)
    finished_run_folder(profile, "prompt-tuning-text", add_prompt_tuning(model, tokenizer, num_virtual_tokens=4))
    capsys.readouterr()  # what making the adapter printed

    assert export("prompt-tuning-text", tmp_path / "export") == USER_ERROR

    assert "PROMPT_TUNING adapter" in refusal(capsys)
    assert not (tmp_path / "export").exists()


def test_a_run_folder_of_another_profile_is_refused(tmp_path, monkeypatch, capsys):
    tiny = get_profile("tiny")
    folder = finished_run_folder(tiny, "full", load_model(tiny))
    monkeypatch.setenv("COURSE_PROFILE", "tiny-causal")

    assert export(folder, tmp_path / "export") == USER_ERROR

    assert "COURSE_PROFILE" in refusal(capsys)


def test_an_adapter_of_another_model_is_refused(tmp_path, monkeypatch, capsys):
    causal = get_profile("tiny-causal")
    folder = finished_run_folder(causal, "lora-r4", add_lora(load_model(causal), rank=4))
    moved = shutil.copytree(folder, tmp_path / "copied" / "lora-r4")  # out of runs/: no profile in its path
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    capsys.readouterr()  # what making the adapter printed

    assert export(moved, tmp_path / "export") == USER_ERROR

    assert "does not fit the model of profile 'tiny'" in refusal(capsys)


def test_a_folder_that_is_not_an_earlier_export_is_never_overwritten(tmp_path, monkeypatch, capsys):
    profile = get_profile("tiny")
    monkeypatch.setenv("COURSE_PROFILE", profile.name)
    finished_run_folder(profile, "full", load_model(profile))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")

    assert export("full", notes) == USER_ERROR

    assert "not an earlier export" in refusal(capsys)
    assert (notes / "mine.txt").read_text() == "keep me" and len(list(notes.iterdir())) == 1


def test_a_disk_without_room_for_the_export_is_refused_naming_free_and_needed_space(tmp_path, monkeypatch, capsys):
    profile = get_profile("tiny")
    monkeypatch.setenv("COURSE_PROFILE", profile.name)
    finished_run_folder(profile, "full", load_model(profile))
    monkeypatch.setattr(utils.apps.export.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))

    assert export("full", tmp_path / "export") == USER_ERROR

    message = refusal(capsys)
    assert "0 MB free" in message and "MB needed" in message and not (tmp_path / "export").exists()


# --- GGUF ------------------------------------------------------------------------------------


def test_the_query_and_key_permutation_is_the_one_transformers_undoes_when_it_reads_gguf():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    heads, kv_heads, head_dim, width = 4, 2, 8, 16  # grouped-query attention, as SmolLM2 (9 and 3 heads)
    reader = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv_heads})
    query = np.random.default_rng(0).standard_normal((heads * head_dim, width)).astype(np.float32)
    key = np.random.default_rng(1).standard_normal((kv_heads * head_dim, width)).astype(np.float32)

    written_query, written_key = permute_for_gguf(query, heads), permute_for_gguf(key, kv_heads)

    assert not np.array_equal(written_query, query)
    assert np.array_equal(reader.process(written_query, "blk.0.attn_q.weight").weights, query)
    assert np.array_equal(reader.process(written_key, "blk.0.attn_k.weight").weights, key)


@pytest.fixture(scope="module")
def offline_export(tmp_path_factory):
    """The offline model with notebook 03's LoRA adapter, its B matrices random, exported with --gguf.

    (profile, tokenizer, the in-memory model's greedy summary and next-token logits, the base
    model's logits, the prompt, the export folder).
    """
    runs, folder = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("export") / "summarizer"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast on a shared 2-core machine, where more threads wait on each other
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COURSE_RUNS_DIR", str(runs))
        patch.setenv("COURSE_PROFILE", "offline")
        profile = get_profile("offline")
        model, tokenizer = load_model_and_tokenizer(profile)
        dialogue = load_profile_data(profile)["test"][0]["dialogue"]
        prompt = prompts_for([dialogue], tokenizer, profile)[0]
        base_logits = next_token_logits(model, tokenizer, prompt)
        model = add_lora(model, rank=profile.lora_rank).eval()
        draw = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:  # zero when trained from scratch: the adapter would change nothing
                    parameter.copy_(0.03 * torch.randn(parameter.shape, generator=draw))
        finished_run_folder(profile, f"lora-r{profile.lora_rank}", model)
        summary = summarize(model, tokenizer, profile, [dialogue], progress=False, max_new_tokens=GGUF_NEW_TOKENS,
                            precision=None)[0]  # float32, as the GGUF is read back
        logits = next_token_logits(model, tokenizer, prompt)
        assert export("lora", folder, "--gguf") == 0
    yield profile, tokenizer, summary, logits, base_logits, prompt, folder
    torch.set_num_threads(threads)


@pytest.mark.offline_model
def test_the_exported_gguf_summarizes_as_the_in_memory_model(offline_export, tmp_path):
    _, tokenizer, summary, logits, base_logits, prompt, folder = offline_export
    alone = tmp_path / "gguf"  # nothing beside the file: config and tokenizer come from the GGUF only
    alone.mkdir()
    (alone / "model-f16.gguf").symlink_to(folder / "model-f16.gguf")

    model = AutoModelForCausalLM.from_pretrained(alone, gguf_file="model-f16.gguf", dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file="model-f16.gguf")

    assert model_input(gguf_tokenizer, "Hi", False) == model_input(tokenizer, "Hi", False)
    encoded = gguf_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        gguf_logits = model(**encoded).logits[0, -1]
        generated = model.generate(**encoded, max_new_tokens=GGUF_NEW_TOKENS, do_sample=False,
                                   pad_token_id=gguf_tokenizer.pad_token_id)
    answer = gguf_tokenizer.decode(generated[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer == summary
    assert (gguf_logits - logits).abs().max() < FP16_LOGIT_TOLERANCE
    assert (logits - base_logits).abs().max() > 10 * FP16_LOGIT_TOLERANCE  # the original GGUF's tensors would fail


@pytest.mark.offline_model
def test_the_gguf_keeps_the_original_metadata_but_its_name_and_file_type(offline_export):
    import gguf

    profile, _, _, _, _, _, folder = offline_export
    written, original = gguf.GGUFReader(folder / "model-f16.gguf"), gguf.GGUFReader(smollm2_gguf_path())

    name = f"SmolLM2-135M-Instruct fine-tuned: lora-r{profile.lora_rank} (offline)"
    assert written.fields["general.name"].contents() == name
    assert written.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    unchanged = [key for key in original.fields if not key.startswith("GGUF.") and key not in
                 ("general.name", "general.file_type")]
    assert "tokenizer.ggml.merges" in unchanged and "llama.attention.head_count_kv" in unchanged
    assert all(written.fields[key].contents() == original.fields[key].contents() for key in unchanged)
    assert {t.name for t in written.tensors} == {t.name for t in original.tensors}
    assert {t.tensor_type.name for t in written.tensors} == {"F16", "F32"}  # F32: the norms, as llama.cpp wants


@pytest.mark.long  # another GGUF type of the export that `make test` checks by summarizing with it
@pytest.mark.offline_model
def test_an_f32_gguf_holds_exactly_the_exported_folders_weights(offline_export, tmp_path):
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    _, tokenizer, _, logits, _, prompt, folder = offline_export
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert (next_token_logits(merged, tokenizer, prompt) - logits).abs().max() < FP32_LOGIT_TOLERANCE

    write_gguf(merged, tmp_path / "model-f32.gguf", "f32", name="merged")

    # transformers' own GGUF reader (what from_pretrained calls), q and k permuted back: the very same numbers
    read_back = load_gguf_checkpoint(str(tmp_path / "model-f32.gguf"), return_tensors=True, model_to_load=merged)
    weights = {name: w for name, w in merged.state_dict().items() if name != "lm_head.weight"}  # tied: not written
    assert read_back["tensors"].keys() == weights.keys()
    assert all(torch.equal(read_back["tensors"][name], weight) for name, weight in weights.items())
    assert read_back["config"]["_model_name_or_path"] == "merged"


@pytest.mark.offline_model
def test_the_modelfile_writes_smollm2s_chat_format_for_the_course_prompt(offline_export):
    _, tokenizer, _, _, _, _, folder = offline_export
    instruction = "Summarize the following conversation.\n\nA: Hi.\n\nSummary:"
    # What Ollama renders from OLLAMA_CHATML_TEMPLATE with SYSTEM set and one prompt, up to the answer.
    ollama_prompt = (f"<|im_start|>system\n{SMOLLM2_SYSTEM_PROMPT}<|im_end|>\n"
                     f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n")

    assert model_input(tokenizer, instruction, False) == ollama_prompt
    assert OLLAMA_CHATML_TEMPLATE.startswith("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n")
    assert (folder / "Modelfile").read_text() == modelfile("model-f16.gguf")
    assert modelfile("model-f16.gguf").startswith("FROM ./model-f16.gguf\n")
