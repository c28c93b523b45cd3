"""The math of learning from scored samples, as pure functions and named plug-ins.

Three registries, each selected by a config key (a registered name, or ``package.module:function``):

- advantage estimators (``advantage_estimator``): ``grpokit.algorithms.estimators``;
- policy losses (``policy_loss``): ``grpokit.algorithms.policy_losses``;
- loss aggregations (``loss_type``): ``grpokit.algorithms.aggregations``.

Besides them: the k3 KL estimate, truncated importance sampling, DAPO's group filters, PPO's
value loss, the Bradley-Terry preference loss and the replay buffer of iterative GRPO.
"""

from grpokit.algorithms.aggregations import AGGREGATIONS, BatchTotals, register_aggregation, token_weights
from grpokit.algorithms.estimators import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    group_advantages,
    process_advantages,
    register_advantage_estimator,
)
from grpokit.algorithms.kl import k3_kl
from grpokit.algorithms.policy_losses import (
    POLICY_LOSSES,
    LossSettings,
    PolicyLossInputs,
    clipped_surrogate,
    register_policy_loss,
)
from grpokit.algorithms.registry import Registry
from grpokit.algorithms.replay import ReplayBuffer

#: The registry behind each config key that names a plug-in.
REGISTRIES = {"advantage_estimator": ADVANTAGE_ESTIMATORS, "policy_loss": POLICY_LOSSES, "loss_type": AGGREGATIONS}

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "POLICY_LOSSES",
    "REGISTRIES",
    "AdvantageInputs",
    "BatchTotals",
    "LossSettings",
    "PolicyLossInputs",
    "Registry",
    "ReplayBuffer",
    "clipped_surrogate",
    "group_advantages",
    "k3_kl",
    "process_advantages",
    "register_advantage_estimator",
    "register_aggregation",
    "register_policy_loss",
    "token_weights",
]
