"""Process supervision (DeepSeekMath §4.1.3): advantages from one score per reasoning step.

A process reward scores the end of each step (``grpokit.rewards.step_scores`` cuts the steps and
finds the token each ends in); the scores are normalised over every step of every output in
the group, and a token's advantage is the sum of the normalised scores of the steps that end at
or after it:

    A_{i,t} = sum over steps j of output i with end(j) >= t of (r_i^j - mean(R)) / std(R)

so a token is credited with its own step and every later step. Tokens after the last step's
end get 0. With outcome rewards as well, the outcome's group-relative advantage (``grpo``) is
added to every token.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from grpokit.algorithms.estimators.estimator_inputs import AdvantageInputs, register_advantage_estimator
from grpokit.algorithms.estimators.group_relative import grpo_advantages


def process_advantages(step_rewards: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                       group_size: int, width: int, eps: float = 1e-4) -> Tensor:
    """Per-token advantages from per-step rewards (DeepSeekMath process supervision).

    Rewards are normalised over all steps of all ``group_size`` outputs of a group (mean and
    sample std, like ``group_advantages``); a group with fewer than two steps, or whose step
    rewards are all equal, gets 0 everywhere.

    Args:
        step_rewards: N lists, one reward per step of each completion (groups contiguous).
        step_ends: N lists, the token index at which each step ends (``step_end_tokens``).
        group_size: G, completions per prompt.
        width: T, token columns of the result (the completion tensor's width).
        eps: added to the std before dividing.

    Returns:
        (N, T) advantages: Â[i, t] = sum of the normalised rewards of the steps of completion i
        ending at token t or later; 0 after the last step's end.

    Example (one group of 2 outputs: steps rewarded [1, 0] ending at tokens 1, 3 and [1]
    ending at token 2; R = [1, 0, 1] has mean 2/3 and std 1/√3, so with eps = 0 a reward
    of 1 becomes (1/3)·√3 = 0.5774 and 0 becomes −(2/3)·√3 = −1.1547):
        >>> process_advantages([[1.0, 0.0], [1.0]], [[1, 3], [2]], group_size=2, width=4, eps=0.0)
        tensor([[-0.5774, -0.5774, -1.1547, -1.1547],
                [ 0.5774,  0.5774,  0.5774,  0.0000]])
    """
    n = len(step_rewards)
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"process_advantages: {n} completions is not a multiple of group_size {group_size}")
    if [len(r) for r in step_rewards] != [len(e) for e in step_ends]:
        raise ValueError("process_advantages: each completion needs one end token per step reward")
    at_step_end = torch.zeros(n, width)  # (N, T) normalised reward placed at each step's end
    for first in range(0, n, group_size):
        rows = range(first, first + group_size)
        rewards = torch.tensor([r for i in rows for r in step_rewards[i]], dtype=torch.float32)  # (S,)
        if rewards.numel() < 2 or bool((rewards == rewards[0]).all()):
            continue  # nothing to compare: the group's advantages stay 0
        normalised = (rewards - rewards.mean()) / (rewards.std() + eps)  # (S,)
        row_ids = torch.tensor([i for i in rows for _ in step_ends[i]])  # (S,)
        token_ids = torch.tensor([t for i in rows for t in step_ends[i]])  # (S,)
        if int(token_ids.max()) >= width:
            raise ValueError(f"process_advantages: a step ends at token {int(token_ids.max())}, "
                             f"beyond width {width}")
        at_step_end.index_put_((row_ids, token_ids), normalised, accumulate=True)
    # Σ over steps ending at t or later = reverse cumulative sum along the tokens
    return at_step_end.flip(1).cumsum(1).flip(1)  # (N, T)


@register_advantage_estimator("process")
def process_supervision_advantages(inputs: AdvantageInputs, config) -> Tensor:
    """Per-token process advantages, plus the outcome's GRPO advantage when there are rewards."""
    if inputs.step_rewards is None:
        raise ValueError("advantage_estimator 'process' needs step scores: set process_reward")
    process = process_advantages(inputs.step_rewards, inputs.step_ends, inputs.group_size,
                                 inputs.mask.shape[1])  # (N, T)
    if inputs.rewards is None:
        return process
    return grpo_advantages(inputs, config) + process
