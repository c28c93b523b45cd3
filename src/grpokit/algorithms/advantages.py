"""Group-relative advantages for GRPO-style training (ALGORITHMS.md §1.2, §3.2).

Rows are grouped contiguously: group j holds rows ``j*G .. j*G+G-1``, i.e. the
G completions sampled for one prompt. Every token of a completion later gets
that completion's advantage.

Scales, keyed by name in ``ADVANTAGE_SCALES``:

* ``"group"``: (r - group mean) / (group std + eps)      -- GRPO (DeepSeekMath)
* ``"batch"``: (r - group mean) / (batch std + eps)      -- TRL ``scale_rewards="batch"``
* ``"none"``:  r - group mean                            -- Dr. GRPO

std is torch's default unbiased estimate (ddof=1), as in TRL.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# name -> fn(grouped rewards (n_groups, G), centered (n_groups, G), eps) -> (n_groups, G)
ScaleFn = Callable[[Tensor, Tensor, float], Tensor]
ADVANTAGE_SCALES: dict[str, ScaleFn] = {}


def register_advantage_scale(name: str) -> Callable[[ScaleFn], ScaleFn]:
    """Decorator adding a scale function to ``ADVANTAGE_SCALES`` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(fn: ScaleFn) -> ScaleFn:
        if name in ADVANTAGE_SCALES:
            raise ValueError(f"advantage scale {name!r} is already registered")
        ADVANTAGE_SCALES[name] = fn
        return fn

    return decorator


@register_advantage_scale("group")
def _scale_by_group_std(grouped: Tensor, centered: Tensor, eps: float) -> Tensor:
    group_std = grouped.std(dim=1, keepdim=True)  # (n_groups, 1)
    return centered / (group_std + eps)  # (n_groups, G)


@register_advantage_scale("batch")
def _scale_by_batch_std(grouped: Tensor, centered: Tensor, eps: float) -> Tensor:
    return centered / (grouped.std() + eps)  # (n_groups, G)


@register_advantage_scale("none")
def _no_scale(grouped: Tensor, centered: Tensor, eps: float) -> Tensor:
    return centered  # (n_groups, G)


def group_advantages(
    rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> Tensor:
    """Group-relative advantage of each completion.

    Args:
        rewards: (N,) scalar reward per completion, N = n_groups * group_size.
        group_size: G, completions per prompt (contiguous rows).
        scale: "group" (GRPO), "batch" (TRL scale_rewards="batch") or "none" (Dr. GRPO).
        eps: added to the std before dividing.

    Returns:
        (N,) float advantages. A group whose rewards are all equal gets exactly 0.

    Example (one group of 3 completions):
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0]), group_size=3)
        tensor([ 1.1545, -0.5773, -0.5773])
        >>> group_advantages(torch.tensor([1.0, 0.0, 0.0]), group_size=3, scale="none")
        tensor([ 0.6667, -0.3333, -0.3333])
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {sorted(ADVANTAGE_SCALES)}")
    n = rewards.shape[0]
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"number of rewards ({n}) is not divisible by group_size ({group_size})")
    rewards = rewards if rewards.is_floating_point() else rewards.float()  # (N,)
    if group_size == 1:  # every group is constant; also avoids std of one sample
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, group_size)  # (n_groups, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (n_groups, G)
    scaled = ADVANTAGE_SCALES[scale](grouped, centered, eps)  # (n_groups, G)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (n_groups, 1)
    return torch.where(constant, torch.zeros_like(scaled), scaled).view(-1)  # (N,)
