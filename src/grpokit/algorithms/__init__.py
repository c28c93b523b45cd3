"""Pure tensor functions for GRPO-family algorithms: advantages, KL, policy loss."""

from grpokit.algorithms.advantages import ADVANTAGE_SCALES, group_advantages, register_advantage_scale
from grpokit.algorithms.kl import k3_kl
from grpokit.algorithms.losses import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_TYPES,
    PolicyLossInputs,
    clipped_surrogate,
    importance_ratio,
    policy_loss,
    register_loss_type,
    token_weights,
)

__all__ = [
    "ADVANTAGE_SCALES",
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_TYPES",
    "PolicyLossInputs",
    "clipped_surrogate",
    "group_advantages",
    "importance_ratio",
    "k3_kl",
    "policy_loss",
    "register_advantage_scale",
    "register_loss_type",
    "token_weights",
]
