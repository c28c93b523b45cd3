"""Per-token log-probs (and entropy) of completion tokens under a model.

Prompts are left-padded and completions right-padded, so the completion positions are the last
``Tc`` positions of ``[prompt | completion]``: the model projects only those through the LM head
(``logits_to_keep``), never the prompt.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target under ``softmax(logits / temperature)``, and optionally entropy.

    >>> logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    >>> logp, ent = token_logprobs(logits, torch.tensor([[1]]), with_entropy=True)
    >>> round(logp.exp().item(), 4), round(ent.item(), 4)  # p = 0.25; H = 1.5 ln 2
    (0.25, 1.0397)
    """
    logp_all = (logits.float() / temperature).log_softmax(-1)  # (B, T, V)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, T)
    return logp, entropy


def completion_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``(B, Tc)`` of completion tokens given their (left-padded) prompts.

    ``prompt_ids`` holds one row per completion (already repeated for the group).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], 1)  # (B, Tp + Tc)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)  # (B, Tp + Tc)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, Tp + Tc)
    width = completion_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=width + 1).logits  # (B, Tc + 1, V)
    return token_logprobs(logits[:, :-1], completion_ids, temperature, with_entropy)
