"""DAPO's dynamic sampling (Yu et al. 2025): groups whose G completions all got the same reward
have zero group-relative advantage, so they add no gradient, only cost; keep the groups with
signal, and (``refill``) sample more prompts until the batch is full again.

These are the tests on a scored batch; the trainer's sampling stage draws the extra rounds.
"""

from __future__ import annotations

import torch
from torch import Tensor


def groups_with_varied_rewards(rewards: Tensor, group_size: int) -> Tensor:
    """``(n_groups,)`` True where a group's rewards are not all equal (DAPO's filter).

    >>> groups_with_varied_rewards(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.5]), 2).tolist()
    [True, False, False]
    """
    grouped = rewards.view(-1, group_size)  # (n_groups, G)
    return grouped.amax(1) > grouped.amin(1)


def groups_with_advantage(advantages: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """``(n_groups,)`` True where some valid token of the group has a non-zero advantage.

    >>> a = torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    >>> groups_with_advantage(a, torch.ones(4, 2), 2).tolist()
    [True, False]
    """
    nonzero = ((advantages != 0) & (mask > 0)).any(1)  # (N,)
    return nonzero.view(-1, group_size).any(1)


def group_rows(groups: Tensor, group_size: int) -> Tensor:
    """Row indices ``(n * G,)`` of the selected groups.

    >>> group_rows(torch.tensor([True, False, True]), 2).tolist()
    [0, 1, 4, 5]
    """
    chosen = groups.nonzero().flatten()  # (n,)
    return (chosen[:, None] * group_size + torch.arange(group_size)).flatten()
