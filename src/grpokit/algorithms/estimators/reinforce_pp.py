"""REINFORCE++ (Hu et al. 2025): the outcome reward on every token, normalised over all tokens of
the batch (global advantage normalisation instead of a per-prompt std), with or without a
per-prompt baseline.

* ``reinforce_pp``:          A = whiten_batch(r)
* ``reinforce_pp_baseline``: A = whiten_batch(r - group mean)   (REINFORCE++-baseline)

``whiten_batch`` is (x - mean) / (std + eps) over the valid tokens of the whole batch, as
OpenRLHF normalises. The KL term stays in the loss (``beta``), not in the reward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpokit.algorithms.estimators.estimator_inputs import AdvantageInputs, per_token, register_advantage_estimator


def batch_whiten(token_values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / (std + eps)`` over the masked positions (unbiased std); padding gets 0.

    Example (two completions of 2 and 1 tokens with rewards 1 and 0: the tokens hold 1, 1, 0,
    mean 2/3, std 0.5774):
        >>> m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
        >>> batch_whiten(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), m)
        tensor([[ 0.5774,  0.5774],
                [-1.1547,  0.0000]])
    """
    valid = token_values[mask > 0]
    if valid.numel() < 2:
        return torch.zeros_like(token_values)
    whitened = (token_values - valid.mean()) / (valid.std() + eps)
    return torch.where(mask > 0, whitened, torch.zeros_like(whitened))


@register_advantage_estimator("reinforce_pp")
def reinforce_pp_advantages(inputs: AdvantageInputs, config) -> Tensor:
    return batch_whiten(per_token(inputs.rewards, inputs.mask), inputs.mask)


@register_advantage_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(inputs: AdvantageInputs, config) -> Tensor:
    grouped = inputs.rewards.float().view(-1, inputs.group_size)  # (n_groups, G)
    centered = (grouped - grouped.mean(1, keepdim=True)).view(-1)  # (N,)
    return batch_whiten(per_token(centered, inputs.mask), inputs.mask)
