"""The course it is named for, FLAN-T5 on DialogSum, through the real Hub code path without the Hub.

Every notebook runs with nbval in `colab`, and every one that trains in `gpu` too, at test sizes
(COURSE_SMOKE=1, on the CPU here), against stand-ins of google/flan-t5-base, knkarthick/dialogsum and the two RoBERTa
repositories (utils/apps/hub_standins.py says what they copy and what they cannot).

Why a seeded cache rather than a local Hub server: a learner without the Hub (a plane, a cluster
node, HF_HUB_OFFLINE=1) runs from the Hugging Face cache, so that is the path worth testing; the
cache's layout is small and documented (`hub/<type>s--<org>--<name>/refs/main` and
`snapshots/<commit>/`), while a server would have to imitate the Hub's API for both
huggingface_hub and datasets. The online branch (a Hub id passed straight to `from_pretrained`
and `load_dataset`) differs only in the string it passes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import run_notebook_with_nbval

from utils.apps.hub_standins import DIALOGSUM, FLAN_T5, T5_EMBEDDINGS, T5_SENTINELS, seed_online_cache
from utils.profiles import ONLINE_REWARD_BACKBONE, ONLINE_TOXICITY_CLASSIFIER

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def standin_cache(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    hf_home = tmp_path_factory.mktemp("standin-hf-home")
    return hf_home, seed_online_cache(hf_home)


# At test sizes `gpu` differs from `colab` in its dtype (bfloat16 weights, float32 master weights) and its
# batches, which matter where a notebook trains: notebook 01 only generates, as every other notebook does
# in `gpu` too, so it runs in `colab` alone.
# `make test` runs 02 in `colab` (it trains, evaluates and records); the rest are `long` (`make test-long`, CI).
ONLINE_RUNS = [pytest.param(notebook, profile, id=f"{notebook.stem}-{profile}",
                            marks=[] if (notebook.stem, profile) == ("02_full_fine_tuning", "colab") else [pytest.mark.long])
               for notebook in NOTEBOOKS for profile in ("colab", "gpu")
               if (notebook.stem, profile) != ("01_prompting", "gpu")]


@pytest.mark.parametrize(("notebook", "profile"), ONLINE_RUNS)
def test_notebook_runs_in_the_online_profile_from_the_cache(notebook, profile, standin_cache, tmp_path):
    hf_home, _ = standin_cache
    environ = {"COURSE_PROFILE": profile, "COURSE_SMOKE": "1", "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}

    run_notebook_with_nbval(notebook, environ, tmp_path / "runs")

    assert (tmp_path / "runs" / profile / "results.json").exists(), "the notebook recorded no results"


def test_the_flan_t5_standin_has_flan_t5_bases_structure(standin_cache):
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    snapshot = standin_cache[1][FLAN_T5]
    config = AutoConfig.from_pretrained(snapshot)
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    model = AutoModelForSeq2SeqLM.from_pretrained(snapshot, dtype=torch.float16)

    assert {"config.json", "generation_config.json", "model.safetensors", "spiece.model", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in snapshot.iterdir()}
    assert (config.model_type, config.feed_forward_proj, config.is_gated_act) == ("t5", "gated-gelu", True)
    # FLAN-T5's config.json says the head is untied, and its checkpoint holds a head of its own; transformers 5
    # reads the flag as "T5 v1.1: do not rescale the decoder's output" and unties because of the checkpoint.
    assert json.loads((snapshot / "config.json").read_text())["tie_word_embeddings"] is False
    assert config.scale_decoder_outputs is False
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (32, 128)
    assert model.shared.weight.shape[0] == T5_EMBEDDINGS == config.vocab_size
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == 512
    sentinels = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(T5_SENTINELS)]
    assert sentinels == list(range(len(tokenizer) - 1, len(tokenizer) - 1 - T5_SENTINELS, -1))
    assert tokenizer("Hello there.")["input_ids"][-1] == 1  # every encoded text ends with </s>
    # transformers keeps T5's output projections in float32 when the rest loads in float16
    assert "wo" in model._keep_in_fp32_modules
    assert model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float16


def test_the_dialogsum_standin_repeats_each_test_dialogue_once_per_reference(standin_cache):
    from utils.data import normalize_rows

    snapshot = standin_cache[1][DIALOGSUM]
    with open(snapshot / "test.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    merged = normalize_rows(rows, "test", merge_repeated_dialogues=True)  # what loading the Hub copy does

    assert list(rows[0]) == ["id", "dialogue", "summary", "topic"]
    assert [row["id"] for row in rows[:3]] == ["test_0_1", "test_0_2", "test_0_3"]
    assert len(merged["dialogue"]) * 3 == len(rows)
    assert all(len(references) == 3 for references in merged["references"])


def test_the_classifier_standin_is_labelled_like_the_real_one_and_loads_from_safetensors(standin_cache):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    snapshot = standin_cache[1][ONLINE_TOXICITY_CLASSIFIER]
    model = AutoModelForSequenceClassification.from_pretrained(snapshot, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(snapshot)

    assert model.config.id2label == {0: "nothate", 1: "hate"}
    assert not (snapshot / "tokenizer.json").exists() and (snapshot / "merges.txt").exists()
    ids = tokenizer("You are kind.")["input_ids"]
    assert (ids[0], ids[-1], tokenizer.pad_token_id) == (0, 2, 1)  # <s> ... </s>, pad 1: RoBERTa's ids
    assert (standin_cache[1][ONLINE_REWARD_BACKBONE] / "model.safetensors").exists()
