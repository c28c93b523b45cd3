"""The value model's loss and fit (PPO): the clipped value loss and explained variance."""

from __future__ import annotations

import torch
from torch import Tensor

from grpokit.algorithms.masked import masked_mean, masked_var


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range_value: float) -> tuple[Tensor, Tensor]:
    """``0.5 * max((V - R)^2, (clip(V, V_old ± c) - R)^2)`` as a token mean; and the clipped fraction.

    The clipping around the rollout's values is not in the PPO paper; it is OpenAI baselines'
    and TRL's.

    Example (V = 1 with V_old = 0.5 is clipped to 0.7: 0.5·max(1, 1.69); the other token is
    inside the range: 0.5·0.01):
        >>> loss, clipped = value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]),
        ...                            torch.tensor([[2.0, 0.1]]), torch.ones(1, 2), 0.2)
        >>> round(loss.item(), 6), clipped.item()  # 0.5 · (1.69 + 0.01) / 2
        (0.425, 0.5)
    """
    old_values = old_values.detach()
    clipped_values = torch.clamp(values, old_values - clip_range_value,
                                 old_values + clip_range_value)  # (N, T)
    unclipped_loss = (values - returns) ** 2  # (N, T)
    clipped_loss = (clipped_values - returns) ** 2  # (N, T)
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    clipped = (clipped_loss > unclipped_loss).to(values.dtype).detach()
    return loss, masked_mean(clipped, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over real tokens: 1 is a perfect value model, 0 a constant one.

    >>> explained_variance(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]]),
    ...                    torch.ones(1, 3))
    0.6666666865348816
    """
    spread = masked_var(returns, mask)
    if spread <= 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / spread)
