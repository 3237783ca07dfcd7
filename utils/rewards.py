"""Reward models for PPO: scorers that read texts (with their own tokenizer) and return one number each.

Every toxicity scorer offers the same two methods:
- `toxicity(texts)`: the probability that each text is toxic, from 0 to 1;
- `reward(texts)`: what PPO maximises, higher for less toxic text.
A reward model trained on rankings (notebook 07, Bradley-Terry) has only `reward`: its score
says which of two texts is better, not how likely one is to be toxic, so its `toxicity` refuses.
Both also take `prompts=`, the dialogue each text summarizes: a reward model trained on
(dialogue, summary) pairs (notebook 07) reads them; the other scorers ignore them.

`make_scorer(profile)` picks one: the hate-speech classifier of the original lab when the
profile has the Hugging Face Hub, a small offline profanity model otherwise, or a reward
model you trained yourself (a folder), read the same way as the Hub classifier.

Rewards a program checks (notebook 09, GRPO) sit at the end: plain functions of (dialogue,
summary) such as `names_the_speakers`, and `CombinedReward`, their weighted sum with 1 - toxicity.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from utils.models import ModelUnavailableError
from utils.plumbing.files import PROJECT_ROOT
from utils.plumbing.hub import HubRepo, hub_or_cache
from utils.profiles import ONLINE_TOXICITY_CLASSIFIER, Profile

DEFAULT_CLASSIFIER = ONLINE_TOXICITY_CLASSIFIER
DEFAULT_NON_TOXIC_LABEL = "nothate"
PROFANITY_INSTALL = "pip install alt-profanity-check"


class ToxicityScorer(Protocol):
    """What PPO and the evaluation need from a reward model."""

    name: str  # says which model scores, e.g. "classifier:facebook/roberta-hate-speech-dynabench-r4-target"

    def toxicity(self, texts: list[str], prompts: list[str] | None = None) -> list[float]:
        """Probability that each text is toxic (0..1)."""
        ...

    def reward(self, texts: list[str], prompts: list[str] | None = None) -> list[float]:
        """Reward for each text: higher means less toxic."""
        ...


def label_index(config, label: str) -> int:
    """Index of the output named `label` in a classifier's config; a ValueError listing the labels if absent."""
    id2label = {int(i): name for i, name in (config.id2label or {}).items()}
    label2id = {**{name: i for i, name in id2label.items()}, **(config.label2id or {})}
    if label in label2id:
        return int(label2id[label])
    raise ValueError(
        f"The classifier has no label {label!r}; its labels are: {', '.join(map(str, id2label.values()))}. "
        "Pass the name of its non-toxic label as non_toxic_label."
    )


def local_folder_or_hub(location: str) -> str:
    """A saved model's folder (as given, or relative to the project folder, as the course prints its
    runs: notebooks run in notebooks/), else a Hub id, from the Hub or the local cache.

    A path of more than two parts that is no folder cannot be a Hub id (those are "org/name"):
    that is a ModelUnavailableError naming both places looked in, not a failed download.
    """
    for candidate in (Path(location).expanduser(), PROJECT_ROOT / location):
        if candidate.is_dir():
            return str(candidate)
    if location.count("/") > 1 or location.startswith((".", "/", "~")):
        raise ModelUnavailableError(
            f"No model folder {location!r}, neither from {Path.cwd()} nor from the project folder {PROJECT_ROOT}. "
            "Notebook 07 prints the folder it saved its reward model in."
        )
    return hub_or_cache(HubRepo(location, "model", "reward model"))


class ClassifierScorer:
    """A sequence classifier (Hub id or local folder) scoring texts with its own tokenizer.

    reward = the logit of the non-toxic label (as in the original lab);
    toxicity = 1 - softmax probability of the non-toxic label.
    A model with a single output (a reward model such as notebook 07 trains) needs no label:
    reward = its output. It gives no toxicity: a Bradley-Terry score is defined only up to a shift
    (adding a constant to every score leaves every ranking, and the training loss, unchanged), so
    sigmoid(-score) would be a number with no meaning; measure toxicity with a classifier.
    Such a model reads each text with its dialogue when `prompts` are given, encoded exactly as
    in its training (utils.reward_model.score_texts); a classifier with labels reads the text alone.
    """

    def __init__(
        self,
        model_id_or_path: str | os.PathLike = DEFAULT_CLASSIFIER,
        non_toxic_label: str = DEFAULT_NON_TOXIC_LABEL,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        max_length: int = 512,
    ):
        location = local_folder_or_hub(str(model_id_or_path))
        self.name = f"classifier:{location}"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            location, use_safetensors=True, trust_remote_code=False
        ).to(self.device).eval()
        single_output = self.model.config.num_labels == 1
        self.non_toxic_index = 0 if single_output else label_index(self.model.config, non_toxic_label)

    @property
    def reads_prompts(self) -> bool:
        """True for a one-output reward model, which scores (dialogue, summary) pairs."""
        return self.model.config.num_labels == 1

    @torch.no_grad()
    def logits(self, texts: list[str], prompts: list[str] | None = None) -> torch.Tensor:
        """The classifier's logits, (len(texts), number of labels), in float32 on the CPU."""
        if self.reads_prompts:
            from utils.reward_model import score_texts

            scores = score_texts(self.model, self.tokenizer, list(texts), prompts, batch_size=self.batch_size)
            return torch.tensor(scores, dtype=torch.float32).reshape(len(texts), 1)
        parts = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            parts.append(self.model(**encoded).logits.float().cpu())
        return torch.cat(parts) if parts else torch.zeros(0, self.model.config.num_labels)

    def reward(self, texts: list[str], prompts: list[str] | None = None) -> list[float]:
        return self.logits(texts, prompts)[:, self.non_toxic_index].tolist()

    def toxicity(self, texts: list[str], prompts: list[str] | None = None) -> list[float]:
        if self.reads_prompts:
            raise ValueError(
                f"{self.name} is a reward model trained on rankings: its scores compare texts and are not "
                "probabilities of toxicity. Measure toxicity with make_scorer(profile), and use this model's reward()."
            )
        logits = self.logits(texts, prompts)
        probabilities = torch.softmax(logits, dim=-1)
        return (1.0 - probabilities[:, self.non_toxic_index]).tolist()


class ProfanityScorer:
    """The offline scorer: `alt-profanity-check`, a linear model on word counts (no GPU, no download).

    toxicity = its probability p that the text is offensive. The reward is the log-odds of
    the text being clean, log((1 - p) / p), with p kept within [1e-4, 1 - 1e-4]: a logit like
    the classifier's reward, so both give PPO rewards of a similar scale (about -9 to +9).
    An empty text is scored like any other (about p = 0.04, reward about +3.3).
    """

    name = "profanity-check"
    EPSILON = 1e-4

    def __init__(self):
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise ImportError(f"ProfanityScorer needs the alt-profanity-check package: {PROFANITY_INSTALL}") from None
        self._predict_prob = predict_prob

    def toxicity(self, texts: list[str], prompts: list[str] | None = None) -> list[float]:
        """`prompts` are ignored: the word-count model reads the text alone."""
        if not texts:
            return []
        return [float(p) for p in self._predict_prob(list(texts))]

    def reward(self, texts: list[str], prompts: list[str] | None = None) -> list[float]:
        rewards = []
        for p in self.toxicity(texts):
            p = min(max(p, self.EPSILON), 1.0 - self.EPSILON)
            rewards.append(math.log((1.0 - p) / p))
        return rewards


def make_scorer(
    profile: Profile,
    reward_model: str | os.PathLike | None = None,
    non_toxic_label: str = DEFAULT_NON_TOXIC_LABEL,
) -> ToxicityScorer:
    """The reward model for `profile`: `reward_model` (a folder or Hub id) when given, else the
    original lab's hate-speech classifier for profiles with the Hub, else the offline profanity model."""
    from utils.models import resolve_device

    if reward_model is not None:
        return ClassifierScorer(reward_model, non_toxic_label, device=resolve_device(profile))
    if profile.needs_hub:
        return ClassifierScorer(DEFAULT_CLASSIFIER, non_toxic_label, device=resolve_device(profile))
    return ProfanityScorer()


# --- rewards a program checks (notebook 09) -----------------------------------------------------
# Each is a plain function of (dialogue, summary) that returns True or False: no model, nothing
# learned, so it can be read in one screen and cannot be argued with. GRPO adds them up with the
# toxicity score above, each with its weight (`CombinedReward`).

SPEAKER = re.compile(r"^\s*(#?[\w ]+?#?)\s*:", re.MULTILINE)  # "#Person1#: ..." -> "#Person1#"
LENGTH_BAND = (8, 30)  # words: a DialogSum summary is one to three sentences
COPY_WORDS = 5  # a dialogue sentence this long or longer found word for word in the summary is a copy


def words(text: str) -> list[str]:
    """The lower-cased words of `text`, speaker tags and punctuation left out of the comparison."""
    return re.findall(r"[a-z0-9']+", text.lower())


def length_in_band(dialogue: str, summary: str, band: tuple[int, int] = LENGTH_BAND) -> bool:
    """The summary has between band[0] and band[1] words: neither a stub nor a retelling."""
    return band[0] <= len(summary.split()) <= band[1]


def speakers(dialogue: str) -> list[str]:
    """The speakers the dialogue names, in order of first turn: the tag before each turn's colon."""
    return list(dict.fromkeys(name.strip() for name in SPEAKER.findall(dialogue)))


def names_the_speakers(dialogue: str, summary: str) -> bool:
    """Every speaker of the dialogue is named in the summary (DialogSum names them by their tag)."""
    return all(name in summary for name in speakers(dialogue))


def copies_no_sentence(dialogue: str, summary: str, min_words: int = COPY_WORDS) -> bool:
    """No sentence of the dialogue with at least `min_words` words appears word for word in the summary."""
    spoken = SPEAKER.sub("", dialogue)
    summary_words = " " + " ".join(words(summary)) + " "
    for sentence in re.split(r"[.!?\n]+", spoken):
        sentence_words = words(sentence)
        if len(sentence_words) >= min_words and " " + " ".join(sentence_words) + " " in summary_words:
            return False
    return True


CHECKS = {"length in band": length_in_band, "names the speakers": names_the_speakers,
          "copies no sentence": copies_no_sentence}
NON_TOXIC = "non-toxic"  # the combined reward's learned component: 1 - the scorer's toxicity


class CombinedReward:
    """A weighted sum of checks (0 or 1 each) and of 1 - toxicity (0..1), per (dialogue, summary).

    `weights` maps a name in CHECKS, or NON_TOXIC, to its weight; `scorer` gives the toxicity
    (any ToxicityScorer), needed only when NON_TOXIC has a weight. Calling it returns every
    component, unweighted, and their weighted sum under "reward".
    """

    def __init__(self, weights: dict[str, float], scorer: ToxicityScorer | None = None):
        unknown = set(weights) - set(CHECKS) - {NON_TOXIC}
        if unknown:
            raise ValueError(f"No reward named {sorted(unknown)}; choose from {[*CHECKS, NON_TOXIC]}.")
        if NON_TOXIC in weights and scorer is None:
            raise ValueError(f"The {NON_TOXIC!r} component needs a toxicity scorer.")
        self.weights = dict(weights)
        self.scorer = scorer
        scorer_name = f"({scorer.name})" if NON_TOXIC in weights else ""
        self.name = " + ".join(f"{w:g} x {n}{scorer_name if n == NON_TOXIC else ''}" for n, w in self.weights.items())

    def __call__(self, summaries: list[str], dialogues: list[str]) -> dict[str, list[float]]:
        """{component: one score per summary} for each weighted component, and "reward": their weighted sum."""
        if len(summaries) != len(dialogues):
            raise ValueError(f"{len(summaries)} summaries for {len(dialogues)} dialogues: give one dialogue each.")
        components = {name: [float(CHECKS[name](d, s)) for d, s in zip(dialogues, summaries)]
                      for name in self.weights if name in CHECKS}
        if NON_TOXIC in self.weights:
            components[NON_TOXIC] = [1.0 - t for t in self.scorer.toxicity(list(summaries))]
        total = [sum(self.weights[name] * components[name][i] for name in self.weights) for i in range(len(summaries))]
        return {**{name: components[name] for name in self.weights}, "reward": total}


def pass_table(check: Callable[[str, str], bool], dialogues: list[str], samples: list[list[str]]) -> np.ndarray:
    """1.0 where a sampled summary passes `check`, else 0.0: shaped like `samples` (dialogues x seeds)."""
    return np.array([[float(check(dialogue, text)) for text in row] for dialogue, row in zip(dialogues, samples)])
