"""The terms of the PPO objective that notebook 06 prints, as pure tensor functions.

For one batch of prompts and the responses the policy sampled for them:

    score      = (reward model's score - running mean) / running std       (ScoreNormalizer)
    reward_t   = -kl_coef * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))   (+ the sequence score on the last token)
    advantage  = GAE(reward, value, gamma, lam)
    loss       = policy clipped surrogate + value_loss_coef * value loss - entropy_coef * entropy

Tensors of per-token quantities have the shape (batch, response_length). Responses are
right-padded, and `mask` is 1 for real response tokens (the end-of-sequence token included)
and 0 for the padding after them. The training loop that uses them is utils.ppo.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the real tokens only: sum(values * mask) / sum(mask) (over `dim`, or over everything)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance over the real tokens: mean((values - mean(values))^2)."""
    centred = values - masked_mean(values, mask)
    return masked_mean(centred**2, mask)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the real tokens to mean 0 and variance 1: (x - mean) / sqrt(var + eps); padding becomes 0."""
    whitened = (values - masked_mean(values, mask)) * torch.rsqrt(masked_var(values, mask) + eps)
    return whitened * mask


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """log pi(token_t) = log_softmax(logits_t)[token_t], per position (0 where `mask` is 0).

    logits: (batch, length, vocab); tokens: (batch, length) -> (batch, length).
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logprobs if mask is None else logprobs * mask


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of the next-token distribution, H = -sum_v p_v log p_v, per position (0 where `mask` is 0)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return entropy if mask is None else entropy * mask


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL estimate per sampled token (the "k1" estimator): log pi(a_t) - log pi_ref(a_t).

    Its expectation over tokens sampled from pi is KL(pi || pi_ref); one sample can be negative.
    """
    kl = logprobs - ref_logprobs
    return kl if mask is None else kl * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each (right-padded) response."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).argmax(dim=1)


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: r_t = -kl_coef * (log pi(a_t) - log pi_ref(a_t)), plus the score at the last real token.

    scores: (batch,), one number per response from the reward model. Padding gets reward 0.
    """
    rewards = -kl_coef * per_token_kl(logprobs, ref_logprobs, mask)
    last = last_token_index(mask)
    rows = torch.arange(len(scores), device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards * mask


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, computed backwards from the last token.

        delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last real token is 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                            (the target of the value head)

    Returns (advantages, returns), both 0 on padding.
    """
    rewards = rewards * mask
    values = values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO clipped surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    ratio = pi(a_t) / pi_old(a_t) = exp(logprobs - old_logprobs). Taking the larger loss (the
    pessimistic bound) means a token stops pushing once its ratio left [1 - eps, 1 + eps] in the
    direction its advantage favours. Returns (loss, clip_fraction): the share of tokens where the
    clipped term was the larger one, so their gradient is zero.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean over tokens of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).

    Returns (loss, clip_fraction): the share of tokens where the clipped error was the larger one.
    """
    clipped_values = torch.max(torch.min(values, old_values + clip_range), old_values - clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction


class FixedKLController:
    """A KL coefficient that never changes (0.0 switches the KL penalty off)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. (2019), aiming the KL at `target`:

        error = clip(current_kl / target - 1, -0.2, 0.2)
        coef  = coef * (1 + error * n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Raise the coefficient when the KL is above target, lower it when below; `n_steps`: samples seen."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class ScoreNormalizer:
    """Scores to mean 0 and std 1, by the running mean and std of every score seen so far.

    A reward model's scale is arbitrary (the profanity model's log-odds span about -9 to +9),
    while PPO's other settings assume rewards of about unit size: the value clip (0.2) and the
    KL coefficient (a penalty per token of beta times the log-ratio) are in reward units. As
    Ziegler et al. (2019) normalised their reward model to mean 0 and std 1, the scores are
    normalised here; the running statistics include the current batch, so the first step
    is normalised by its own scores.
    """

    def __init__(self, eps: float = 1e-6):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean (Chan et al.'s parallel update)
        self.eps = eps

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 1.0

    def update(self, scores: torch.Tensor) -> None:
        """Add a batch of scores to the running statistics."""
        values = scores.detach().double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_m2 = ((values - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """(scores - mean) / std with the statistics so far."""
        return (scores - self.mean) / max(self.std, self.eps)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
