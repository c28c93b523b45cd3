"""Pairwise preference math for reward models: the Bradley–Terry loss and pair accuracy.

Under the Bradley–Terry model the probability that a human prefers the chosen response over the
rejected one is ``sigmoid(r_chosen - r_rejected)``; a reward model is trained by maximising the
log of that probability over preference pairs (InstructGPT; DeepSeekMath initialises its reward
model from the base model and trains it at lr 2e-5, DeepSeekMath §4.2; R1's helpful reward
model is trained on 66,000 pairs, per the DeepSeek-R1 Nature paper).
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctests build their tensors with it)
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | float | None = None
) -> Tensor:
    """Mean of ``-log sigmoid(chosen - rejected - margin)`` over the pairs.

    Args:
        chosen_scores: (B,) reward-model scores of the preferred responses.
        rejected_scores: (B,) scores of the other responses of the same pairs.
        margin: optional (B,) or scalar amount by which chosen must beat rejected (Llama 2's
            preference-strength margin; TRL's ``margin`` column). None means 0.

    Returns:
        A scalar tensor.

    Scores 1 vs 0 give ``log(1 + e^-1) = 0.3133``; 0 vs 0 give ``log 2 = 0.6931``; a margin of
    1 turns the first pair into the second:

        >>> bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))
        tensor(0.3133)
        >>> bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))  # (0.3133 + 0.6931) / 2
        tensor(0.5032)
        >>> bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0)
        tensor(0.6931)
    """
    difference = chosen_scores - rejected_scores  # (B,)
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference).mean()


def pair_accuracy(chosen_scores: Tensor, rejected_scores: Tensor) -> float:
    """Share of pairs the scores rank correctly; a tie counts as half a pair.

    Counting ties as 0.5 makes a model that cannot tell responses apart (every score equal)
    score 0.5, the chance level, rather than 0. (TRL's RewardTrainer counts only strict wins.)

    Args:
        chosen_scores: (B,) scores of the preferred responses.
        rejected_scores: (B,) scores of the other responses.

    Returns:
        A float in [0, 1].

        >>> pair_accuracy(torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
        0.625
    """
    wins = (chosen_scores > rejected_scores).float()  # (B,)
    ties = (chosen_scores == rejected_scores).float()  # (B,)
    return float((wins + 0.5 * ties).mean())
