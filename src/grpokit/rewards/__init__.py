"""Reward functions: the TRL calling convention and scoring (``scoring``), rewards by name
(``lookup``), and the built-in rewards, one family per module.

Built-in rewards live in modules of this package and register themselves with
``@register_reward("name")``; :func:`resolve_reward` imports them on first lookup.
"""

from grpokit.rewards.lookup import REWARD_REGISTRY, RewardFunc, register_reward, resolve_reward, reward_name
from grpokit.rewards.scoring import RewardBatch, RewardFunctionError, reward_metrics, score_completions

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
