"""Pure functions for GRPO-family algorithms: advantages (outcome and process), KL, policy loss,
replay."""

from grpokit.algorithms.advantages import ADVANTAGE_SCALES, group_advantages, register_advantage_scale
from grpokit.algorithms.kl import k3_kl
from grpokit.algorithms.losses import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_TYPES,
    PolicyLossInputs,
    clipped_surrogate,
    importance_ratio,
    per_token,
    policy_loss,
    register_loss_type,
    token_weights,
)
from grpokit.algorithms.process import process_advantages, split_steps, step_end_tokens
from grpokit.algorithms.replay import ReplayBuffer

__all__ = [
    "ADVANTAGE_SCALES",
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_TYPES",
    "PolicyLossInputs",
    "ReplayBuffer",
    "clipped_surrogate",
    "group_advantages",
    "importance_ratio",
    "k3_kl",
    "per_token",
    "policy_loss",
    "process_advantages",
    "register_advantage_scale",
    "register_loss_type",
    "split_steps",
    "step_end_tokens",
    "token_weights",
]
