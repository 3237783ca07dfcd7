"""Stand-ins for the online profiles' Hub repositories, written into a Hugging Face cache.

The Hub cannot be reached from the machines that test this course (CI, the GPU machine). So the
online profiles run there against small repositories built here, under the real repository ids,
with the real repositories' structure, and seeded into a cache the way `hf download` leaves it
(`<HF_HOME>/hub/<type>s--<org>--<name>/refs/main` naming a commit, the files under
`snapshots/<commit>/`). With `HF_HUB_OFFLINE=1` the course then loads them through its normal
code path (utils.plumbing.hub.hub_or_cache), exactly as a learner's cache would be used on a plane.

What each stand-in copies, and what it cannot:
- google/flan-t5-base: T5 v1.1 (gated-GELU feed-forward, untied LM head, relative attention with
  32 buckets up to distance 128), 32,128 embeddings, pad 0, eos 1, decoder start 0, a 512-token
  window, and the repository's files (config.json, generation_config.json, model.safetensors,
  spiece.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json). Its sentencepiece
  unigram vocabulary is learned from the bundled sample, so it has a few thousand pieces before
  the 100 sentinels instead of 32,000 learned on C4. The weights are random: width and depth are
  shrunk for a CPU, or FLAN-T5-base's own (248M parameters) for the GPU check's speed and memory.
- knkarthick/dialogsum: train/validation/test CSVs with id, dialogue, summary, topic; the test
  split repeats each dialogue once per reference (three rows), as the Hub copy does. The text is
  the bundled sample's; its second and third references are derived from the first.
- facebook/roberta-hate-speech-dynabench-r4-target: a RoBERTa sequence classifier labelled
  nothate/hate, with model.safetensors and a byte-level BPE as vocab.json and merges.txt only
  (no tokenizer.json: transformers builds it, which exercises that path).
- distilbert/distilroberta-base: a RoBERTa masked LM (the classification head is new when
  notebook 07 loads it, as with the real one), with the same kind of tokenizer and tokenizer.json.
  Both RoBERTas are 2 layers of width 32 with a 2,000-token vocabulary (the real ones: 50,265).

Run as `python -m utils.apps.hub_standins HF_HOME [--real-dimensions]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

from utils.data import BUNDLED_FOLDER, SPLITS, read_rows
from utils.profiles import ONLINE_REWARD_BACKBONE, ONLINE_TOXICITY_CLASSIFIER

FLAN_T5 = "google/flan-t5-base"
DIALOGSUM = "knkarthick/dialogsum"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # every stand-in's one revision
T5_EMBEDDINGS = 32128
T5_SENTINELS = 100
T5_PIECES = 2000  # learned from the bundled sample (FLAN-T5's own: 32,000)
ROBERTA_VOCAB = 2000

# Widths and depths: FLAN-T5-base's own, and a CPU-sized one for the tests.
FLAN_T5_BASE_DIMENSIONS = dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12)
SMALL_DIMENSIONS = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)


def bundled_rows(split: str) -> list[dict]:
    """Rows of one split of the bundled sample (the stand-ins' only source of text)."""
    return read_rows(BUNDLED_FOLDER / f"{split}.jsonl")


def _corpus() -> list[str]:
    return [text for split in SPLITS for row in bundled_rows(split) for text in (row["dialogue"], row["summary"])]


# --- the Hugging Face cache -----------------------------------------------------------------


def seed_repository(hf_home: Path, repo_id: str, repo_type: str, files: Path) -> Path:
    """Copy the files of folder `files` into the cache as `repo_id`'s snapshot; return the snapshot."""
    repo = Path(hf_home) / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


# --- FLAN-T5 ------------------------------------------------------------------------------


def write_t5_tokenizer(folder: Path, pieces: int = T5_PIECES) -> None:
    """A sentencepiece unigram model (pad 0, eos 1, unk 2) and the 100 sentinels, in T5's files."""
    import io

    import sentencepiece
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=pieces, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, minloglevel=2, num_threads=1,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocabulary = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    vocabulary = [(piece, 0.0 if processor.is_control(i) else score) for i, (piece, score) in enumerate(vocabulary)]
    sentinels = [f"<extra_id_{i}>" for i in range(T5_SENTINELS)]
    vocabulary += [(sentinel, 0.0) for sentinel in reversed(sentinels)]  # <extra_id_0> is the last id, as in T5
    # What transformers' converter writes for T5's spiece.model (it needs protobuf, which the course lacks).
    backend = Tokenizer(models.Unigram(vocabulary, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens=sentinels, model_max_length=512,
    )
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="T5Tokenizer", extra_ids=T5_SENTINELS)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_flan_t5(folder: Path, dimensions: dict | None = None, seed: int = 0) -> Path:
    """A random T5 v1.1 with FLAN-T5-base's configuration (at `dimensions`) and files, in `folder`."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    write_t5_tokenizer(folder)
    config = T5Config(
        vocab_size=T5_EMBEDDINGS, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, n_positions=512,
        architectures=["T5ForConditionalGeneration"], **(dimensions or SMALL_DIMENSIONS),
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    # transformers 5 builds T5 with the LM head tied to the embeddings, and unties them on loading
    # only when the checkpoint holds a head of its own, as FLAN-T5's does: so this one holds one too.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * config.d_model**-0.5)
    model.config.tie_word_embeddings = False
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# --- DialogSum ------------------------------------------------------------------------------


def other_references(summary: str, topic: str) -> list[str]:
    """Two more references for a test dialogue, made from its one bundled summary."""
    first_sentence = summary.split(". ")[0].rstrip(".") + "."
    about = f"#Person1# and #Person2# talk about {topic or 'something'}."
    return [first_sentence if first_sentence != summary else about + " " + summary, about]


def write_dialogsum(folder: Path) -> Path:
    """The Hub copy's CSV splits, written from the bundled sample: three rows per test dialogue."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = bundled_rows(split)
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=["id", "dialogue", "summary", "topic"])
            writer.writeheader()
            for index, row in enumerate(rows):
                topic = row.get("topic", "")
                if split == "test":
                    references = [row["summary"], *other_references(row["summary"], topic)]
                    for number, reference in enumerate(references, start=1):
                        writer.writerow({"id": f"test_{index}_{number}", "dialogue": row["dialogue"],
                                         "summary": reference, "topic": topic})
                else:
                    writer.writerow({"id": f"{split}_{index}", "dialogue": row["dialogue"],
                                     "summary": row["summary"], "topic": topic})
    return folder


# --- RoBERTa --------------------------------------------------------------------------------


def write_roberta_tokenizer(folder: Path, with_tokenizer_json: bool = True) -> None:
    """A byte-level BPE learned from the bundled sample, saved as RoBERTa's vocab.json and merges.txt."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    backend = ByteLevelBPETokenizer()
    backend.train_from_iterator(_corpus(), vocab_size=ROBERTA_VOCAB, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    with tempfile.TemporaryDirectory() as scratch:
        backend.save_model(scratch)
        tokenizer = RobertaTokenizerFast(vocab=f"{scratch}/vocab.json", merges=f"{scratch}/merges.txt",
                                         model_max_length=512)
        tokenizer.save_pretrained(folder)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(f"{scratch}/{name}", folder / name)
    if not with_tokenizer_json:  # a repository from before tokenizer.json: transformers builds it from the BPE files
        (folder / "tokenizer.json").unlink()


def write_roberta(folder: Path, labels: dict[int, str] | None, seed: int = 0) -> Path:
    """A small random RoBERTa: a sequence classifier with `labels`, or a masked LM when None."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    write_roberta_tokenizer(folder, with_tokenizer_json=labels is None)
    names = labels or {0: "LABEL_0", 1: "LABEL_1"}
    config = RobertaConfig(
        vocab_size=ROBERTA_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, id2label=names, label2id={name: index for index, name in names.items()},
    )
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(config) if labels else RobertaForMaskedLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# --- all of them ----------------------------------------------------------------------------


def seed_online_cache(hf_home: Path, real_dimensions: bool = False) -> dict[str, Path]:
    """Write every repository the online profiles load into the cache at `hf_home`; their snapshots by id."""
    hf_home = Path(hf_home)
    dimensions = FLAN_T5_BASE_DIMENSIONS if real_dimensions else SMALL_DIMENSIONS
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        builders = {
            (FLAN_T5, "model"): lambda: write_flan_t5(scratch / "t5", dimensions),
            (DIALOGSUM, "dataset"): lambda: write_dialogsum(scratch / "dialogsum"),
            (ONLINE_TOXICITY_CLASSIFIER, "model"): lambda: write_roberta(scratch / "classifier",
                                                                         {0: "nothate", 1: "hate"}),
            (ONLINE_REWARD_BACKBONE, "model"): lambda: write_roberta(scratch / "backbone", None),
        }
        return {repo_id: seed_repository(hf_home, repo_id, kind, build()) for (repo_id, kind), build in builders.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("hf_home", type=Path, help="the HF_HOME to seed (created if missing)")
    parser.add_argument("--real-dimensions", action="store_true",
                        help="FLAN-T5-base's real width and depth (random weights), for GPU speed and memory")
    arguments = parser.parse_args(argv)
    for repo_id, snapshot in seed_online_cache(arguments.hf_home, arguments.real_dimensions).items():
        print(f"{repo_id}: {snapshot}")


if __name__ == "__main__":
    main()
