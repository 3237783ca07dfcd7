"""A synthetic reward for the PPO tests: a policy can learn it in a few steps, with no classifier."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TokenShareReward:
    """A synthetic reward for tests: how much of a text one token makes up.

    reward = (occurrences of the token's text) x (its length) / (length of the text), from 0 to 1
    (0 for an empty text). It is measured on the text, not on token ids, because tokenizing a
    decoded text again can merge tokens ("." "." -> "..").
    """

    def __init__(self, token: str | int, tokenizer: PreTrainedTokenizerBase | None = None):
        if isinstance(token, int):
            if tokenizer is None:
                raise ValueError("A token id needs its tokenizer, to turn it into text.")
            token = tokenizer.decode([token])
        if not token:
            raise ValueError("The token must have some text.")
        self.token = token
        self.name = f"token-share:{token!r}"

    def reward(self, texts: list[str], prompts: list[str] | None = None) -> list[float]:
        return [text.count(self.token) * len(self.token) / len(text) if text else 0.0 for text in texts]
