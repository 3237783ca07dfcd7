"""Online profiles without the Hub: what the local Hugging Face cache holds is used, what it lacks is named.

The cache is seeded the way `hf download` leaves it, with the stand-ins of utils/apps/hub_standins.py
under the real repository ids. Each command runs as a user runs it, in its own process with
HF_HOME and HF_HUB_OFFLINE=1 set, because huggingface_hub reads the cache's location once, when
it is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.apps.hub_standins import DIALOGSUM as DATASET
from utils.apps.hub_standins import FLAN_T5 as MODEL
from utils.apps.hub_standins import seed_online_cache, seed_repository, write_dialogsum, write_flan_t5
from utils.plumbing.files import PROJECT_ROOT
from utils.profiles import ONLINE_REWARD_BACKBONE, ONLINE_TOXICITY_CLASSIFIER


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
    seed_repository(hf_home, MODEL, "model", write_flan_t5(hf_home.parent / "t5"))
    seed_repository(hf_home, DATASET, "dataset", write_dialogsum(hf_home.parent / "csv"))

    result = course(hf_home, "prepare", profile="gpu")

    assert result.returncode == 2
    assert MODEL not in result.stderr and DATASET not in result.stderr
    assert ONLINE_TOXICITY_CLASSIFIER in result.stderr and ONLINE_REWARD_BACKBONE in result.stderr


@pytest.mark.long  # `make test` runs notebook 02 in `colab` from a seeded cache (tests/test_online_profiles.py)
def test_with_everything_cached_an_online_profile_runs_from_the_cache(hf_home):
    snapshot = seed_online_cache(hf_home)[MODEL]

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
    assert device == "auto" and int(train_rows) == 16 and int(references) == 3
    assert scorer.startswith("classifier:") and ONLINE_TOXICITY_CLASSIFIER.replace("/", "--") in scorer
