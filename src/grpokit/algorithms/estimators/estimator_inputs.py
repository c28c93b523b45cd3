"""What every advantage estimator receives and returns, and the registry they are named in.

An estimator is ``fn(inputs: AdvantageInputs, config) -> (N, T)`` per-token advantages, where
``config`` is the trainer's config (its keys are the estimator's options, e.g.
``scale_rewards``). Register one with ``@register_advantage_estimator("name")`` and select it
with ``advantage_estimator: name``, or name it by import path
(``advantage_estimator: my_package.module:my_estimator``) without registering it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grpokit.algorithms.registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator", "advantage_estimator")
register_advantage_estimator = ADVANTAGE_ESTIMATORS.register


@dataclass
class AdvantageInputs:
    """One scored batch of N completions, groups contiguous and of equal size."""

    rewards: Tensor | None
    """(N,) total outcome reward of each completion, or None when only steps are scored."""
    group_ids: Tensor
    """(N,) the prompt each completion answers: 0, 0, ..., 1, 1, ... (G rows per group)."""
    mask: Tensor
    """(N, T) float, 1 on the completion tokens that enter the loss."""
    step_rewards: list[list[float]] | None = None
    """Process rewards: one score per reasoning step of each completion."""
    step_ends: list[list[int]] | None = None
    """The token index at which each of those steps ends."""
    values: Tensor | None = None
    """(N, T) a value model's V(s_t) at sampling time (PPO)."""
    sampling_logp: Tensor | None = None
    """(N, T) log-probs of the sampled tokens under the sampling policy."""
    ref_logp: Tensor | None = None
    """(N, T) the same tokens' log-probs under the reference model, when one is kept."""

    @property
    def group_size(self) -> int:
        """G, checked: groups are contiguous runs of equal length.

        >>> AdvantageInputs(None, torch.tensor([0, 0, 1, 1]), torch.ones(4, 1)).group_size
        2
        """
        ids = self.group_ids
        size = int((ids == ids[0]).sum())
        expected = torch.arange(ids.shape[0] // max(size, 1)).repeat_interleave(size)
        if size < 1 or ids.shape[0] % size or not torch.equal(ids.cpu() - ids[0].cpu(), expected):
            raise ValueError(f"group_ids must be contiguous groups of equal size, got {ids.tolist()}")
        return size


def per_token(advantages: Tensor, mask: Tensor) -> Tensor:
    """One advantage per completion ``(N,)`` given to each of its tokens ``(N, T)``.

    >>> per_token(torch.tensor([1.0, -1.0]), torch.ones(2, 3)).tolist()
    [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]
    """
    return advantages.to(mask.dtype)[:, None].expand_as(mask)
