"""RLOO (Ahmadian et al. 2024): each completion's baseline is the mean reward of the other G - 1
completions of its prompt; no division by a std.

    A_i = r_i - (1 / (G - 1)) * sum_{j != i} r_j  =  G / (G - 1) * (r_i - mean(r))
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctest builds its tensors with it)
from torch import Tensor

from grpokit.algorithms.estimators.estimator_inputs import AdvantageInputs, per_token, register_advantage_estimator


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """``r_i`` minus the mean of the other rewards of its group, ``(N,)``.

    Example (rewards 1, 0, 0: the first is compared with (0 + 0) / 2, the others with (1 + 0) / 2):
        >>> leave_one_out_advantages(torch.tensor([1.0, 0.0, 0.0]), 3).tolist()
        [1.0, -0.5, -0.5]
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 completions per prompt, got num_generations={group_size}")
    grouped = rewards.float().view(-1, group_size)  # (n_groups, G)
    others = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)  # (n_groups, G)
    return (grouped - others).view(-1)  # (N,)


@register_advantage_estimator("rloo")
def rloo_advantages(inputs: AdvantageInputs, config) -> Tensor:
    return per_token(leave_one_out_advantages(inputs.rewards, inputs.group_size), inputs.mask)
