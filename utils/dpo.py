"""Direct preference optimization (DPO; Rafailov et al., 2023): learning from pairs of responses.

For a prompt x, a preferred response y_w ("chosen") and a worse one y_l ("rejected"):

    margin = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    loss   = -log sigmoid(beta * margin)

DPO needs no reward model and no sampling: the implicit reward of a response is
beta * (log pi - log pi_ref), and the loss is the Bradley-Terry loss of notebook 07 applied to it.
The reference is the policy with its LoRA adapter switched off, as in PPO (utils.ppo).

The log-probability of a response is the sum over its tokens of the same per-token
log-probabilities PPO uses (utils.families.answer_logits_and_hidden, utils.ppo_terms), for both
families: TRL's DPOTrainer supports decoder-only models only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.families import answer_logits_and_hidden
from utils.ppo_terms import logprobs_from_logits


def sequence_logprobs(
    model: torch.nn.Module,
    is_encoder_decoder: bool,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    decoder_start_token_id: int | None = None,
) -> torch.Tensor:
    """log pi(response | query) of each row: the sum of its tokens' log-probabilities, shape (batch,).

    Queries are padded as the family generates (left for decoder-only), responses right-padded;
    masks are 1 on real tokens.
    """
    logits, _ = answer_logits_and_hidden(
        model, is_encoder_decoder, query_ids, query_mask, response_ids, response_mask, decoder_start_token_id
    )
    return logprobs_from_logits(logits, response_ids, response_mask).sum(dim=1)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards) of a batch of pairs.

    Each reward is beta * (log pi - log pi_ref) of one response: how much more likely the policy
    made it than the reference did. The loss falls as the chosen reward rises above the rejected one.
    """
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()
