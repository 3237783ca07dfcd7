"""Online profiles without the Hub: what the local Hugging Face cache holds is used, what it lacks is named.

The cache is seeded the way `hf download` leaves it (`<HF_HOME>/hub/<type>s--<org>--<name>/`, a
`refs/main` naming a commit, the files under `snapshots/<commit>/`), with small stand-ins under the
real repository ids: the tiny T5 as google/flan-t5-base, CSV splits written from the bundled sample
as knkarthick/dialogsum, tiny RoBERTa models as the classifier and the reward backbone. Each command
runs as a user runs it, in its own process with HF_HOME and HF_HUB_OFFLINE=1 set, because
huggingface_hub reads the cache's location once, when it is imported.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils.files import DATA_DIR, PROJECT_ROOT
from utils.models import ensure_tiny_model
from utils.profiles import ONLINE_REWARD_BACKBONE, ONLINE_TOXICITY_CLASSIFIER, TINY_T5

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL, DATASET = "google/flan-t5-base", "knkarthick/dialogsum"


def seed(hf_home: Path, repo_id: str, repo_type: str, source: Path) -> Path:
    """Put the files of `source` into the cache as `repo_id`'s snapshot; returns the snapshot folder."""
    repo = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def dialogsum_csvs(folder: Path) -> Path:
    """The Hub copy's layout: train/validation/test CSVs with id, dialogue, summary, topic."""
    folder.mkdir()
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (DATA_DIR / "dialogsum_sample" / f"{split}.jsonl").read_text().splitlines()
                if line.strip()]
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=["id", "dialogue", "summary", "topic"])
            writer.writeheader()
            for index, row in enumerate(rows):
                writer.writerow({"id": f"{split}_{index}", "dialogue": row["dialogue"], "summary": row["summary"],
                                 "topic": row.get("topic", "")})
    return folder


def tiny_roberta(folder: Path, labels: dict[int, str] | None) -> Path:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tokenizer_source = ensure_tiny_model(TINY_T5)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=600, pad_token_id=tokenizer.pad_token_id,
                           num_labels=len(labels) if labels else 1, id2label=labels or {0: "LABEL_0"},
                           label2id={v: k for k, v in (labels or {0: "LABEL_0"}).items()})
    RobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def hf_home(tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir()
    return home


def course(hf_home: Path, *arguments: str, profile: str = "colab") -> subprocess.CompletedProcess:
    """`python -m utils ARGUMENTS` in `profile` at test sizes, without the Hub, with this cache."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "COURSE_PROFILE": profile,
           "COURSE_SMOKE": "1"}
    return subprocess.run([sys.executable, "-m", "utils", *arguments], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_an_empty_cache_names_every_repository_and_how_to_fetch_it(hf_home):
    result = course(hf_home, "prepare")

    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    for command in (f"hf download {MODEL}", f"hf download {DATASET} --repo-type dataset",
                    f"hf download {ONLINE_TOXICITY_CLASSIFIER}", f"hf download {ONLINE_REWARD_BACKBONE}"):
        assert command in result.stderr
    assert "COURSE_PROFILE=offline" in result.stderr


def test_only_what_the_cache_lacks_is_named(hf_home):
    seed(hf_home, MODEL, "model", ensure_tiny_model(TINY_T5))
    seed(hf_home, DATASET, "dataset", dialogsum_csvs(hf_home.parent / "csv"))

    result = course(hf_home, "prepare", profile="gpu")

    assert result.returncode == 2
    assert MODEL not in result.stderr and DATASET not in result.stderr
    assert ONLINE_TOXICITY_CLASSIFIER in result.stderr and ONLINE_REWARD_BACKBONE in result.stderr


def test_with_everything_cached_an_online_profile_runs_from_the_cache(hf_home):
    snapshot = seed(hf_home, MODEL, "model", ensure_tiny_model(TINY_T5))
    seed(hf_home, DATASET, "dataset", dialogsum_csvs(hf_home.parent / "csv"))
    seed(hf_home, ONLINE_TOXICITY_CLASSIFIER, "model",
         tiny_roberta(hf_home.parent / "classifier", {0: "nothate", 1: "hate"}))
    seed(hf_home, ONLINE_REWARD_BACKBONE, "model", tiny_roberta(hf_home.parent / "backbone", None))

    prepared = course(hf_home, "prepare")
    assert prepared.returncode == 0, prepared.stderr
    assert str(snapshot) in prepared.stdout

    probe = ("from utils.data import load_profile_data; from utils.profiles import get_profile, with_overrides; "
             "from utils.rewards import make_scorer; profile = with_overrides(get_profile('colab')); "
             "data = load_profile_data(profile); scorer = make_scorer(profile); "
             "print(profile.device, len(data['train']), len(data['test'][0]['references']), scorer.name)")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "COURSE_SMOKE": "1"}
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert loaded.returncode == 0, loaded.stderr
    device, train_rows, references, scorer = loaded.stdout.split()
    assert device == "auto" and int(train_rows) == 16 and int(references) >= 1
    assert scorer.startswith("classifier:") and ONLINE_TOXICITY_CLASSIFIER.replace("/", "--") in scorer
