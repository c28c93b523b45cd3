"""Advantage estimators: ``(AdvantageInputs, config) -> (N, T)`` per-token advantages, by name.

=====================  ============================================================  ==========
name                   advantage of token t of completion i                         from
=====================  ============================================================  ==========
grpo                   (r_i - group mean) / scale (``scale_rewards``)               GRPO
rloo                   r_i - mean of the other G - 1 rewards of the group           RLOO
reinforce_pp           r_i whitened over every token of the batch                   REINFORCE++
reinforce_pp_baseline  (r_i - group mean) whitened over every token of the batch    REINFORCE++
process                sum of normalised step scores ending at or after t (+ grpo)  DeepSeekMath
gae                    GAE over KL-shaped token rewards and a value model           PPO
=====================  ============================================================  ==========
"""

from grpokit.algorithms.estimators import gae, group_relative, leave_one_out, process_supervision, reinforce_pp  # noqa: F401
from grpokit.algorithms.estimators.estimator_inputs import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    per_token,
    register_advantage_estimator,
)
from grpokit.algorithms.estimators.group_relative import group_advantages
from grpokit.algorithms.estimators.process_supervision import process_advantages

__all__ = ["ADVANTAGE_ESTIMATORS", "AdvantageInputs", "group_advantages", "per_token", "process_advantages",
           "register_advantage_estimator"]
