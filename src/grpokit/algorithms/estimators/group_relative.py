"""GRPO's group-relative advantage (DeepSeekMath §4.1.2) and its scales.

Rows are grouped contiguously: group j holds the G completions sampled for prompt j. Every
token of a completion gets that completion's advantage. ``scale_rewards`` picks the divisor:

* ``"group"``: (r - group mean) / (group std + eps)   -- GRPO
* ``"batch"``: (r - group mean) / (batch std + eps)   -- TRL's ``scale_rewards="batch"``
* ``"none"``:  r - group mean                         -- Dr. GRPO

std is torch's default unbiased estimate (ddof=1), as in TRL.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from grpokit.algorithms.estimators.estimator_inputs import AdvantageInputs, per_token, register_advantage_estimator

# name -> fn(grouped rewards (n_groups, G), centered (n_groups, G), eps) -> (n_groups, G)
REWARD_SCALES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "group": lambda grouped, centered, eps: centered / (grouped.std(dim=1, keepdim=True) + eps),
    "batch": lambda grouped, centered, eps: centered / (grouped.std() + eps),
    "none": lambda grouped, centered, eps: centered,
}


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Group-relative advantage of each completion.

    Args:
        rewards: (N,) scalar reward per completion, N = n_groups * group_size.
        group_size: G, completions per prompt (contiguous rows).
        scale: "group" (GRPO), "batch" (TRL scale_rewards="batch") or "none" (Dr. GRPO).
        eps: added to the std before dividing.

    Returns:
        (N,) float advantages. A group whose rewards are all equal gets exactly 0.

    Example (one group of 3 completions: mean 1/3, std 0.5774):
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0]), group_size=3)
        tensor([ 1.1545, -0.5773, -0.5773])
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0]), group_size=3, scale="none")
        tensor([ 0.6667, -0.3333, -0.3333])
    """
    if scale not in REWARD_SCALES:
        raise ValueError(f"unknown scale_rewards {scale!r}; valid: {sorted(REWARD_SCALES)}")
    n = rewards.shape[0]
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"number of rewards ({n}) is not divisible by group_size ({group_size})")
    rewards = rewards if rewards.is_floating_point() else rewards.float()  # (N,)
    if group_size == 1:  # every group is constant; also avoids std of one sample
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, group_size)  # (n_groups, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (n_groups, G)
    scaled = REWARD_SCALES[scale](grouped, centered, eps)  # (n_groups, G)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (n_groups, 1)
    return torch.where(constant, torch.zeros_like(scaled), scaled).view(-1)  # (N,)


@register_advantage_estimator("grpo")
def grpo_advantages(inputs: AdvantageInputs, config) -> Tensor:
    """``group_advantages`` with ``config.scale_rewards``, on every token of the completion."""
    return per_token(group_advantages(inputs.rewards, inputs.group_size, config.scale_rewards), inputs.mask)
