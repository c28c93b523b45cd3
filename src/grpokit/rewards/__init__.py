"""Reward functions: the TRL calling convention, scoring, and a name registry.

Built-in rewards live in modules of this package and register themselves with
``@register_reward("name")``; :func:`resolve_reward` imports them on first lookup.
"""

from grpokit.rewards.scoring import (
    REWARD_REGISTRY,
    RewardBatch,
    RewardFunc,
    RewardFunctionError,
    register_reward,
    resolve_reward,
    reward_metrics,
    reward_name,
    score_completions,
)

__all__ = [
    "REWARD_REGISTRY",
    "RewardBatch",
    "RewardFunc",
    "RewardFunctionError",
    "register_reward",
    "resolve_reward",
    "reward_metrics",
    "reward_name",
    "score_completions",
]
