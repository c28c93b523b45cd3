"""Policy losses: ``(PolicyLossInputs, LossSettings) -> ((B, T) per-token loss, metrics)``, by name.

==========  ====================================================================  ============
name        per-token loss (before the KL term and the aggregation's weights)      from
==========  ====================================================================  ============
clip        -min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t), token ratio   GRPO, PPO, DAPO
gspo        the same with one length-normalised ratio per sequence                 GSPO
gspo_token  GSPO's ratio as value, each token's log-prob in the gradient           GSPO-token
cispo       -sg[min(r_t, 1 + eps_high)] A_t log pi(o_t)                            CISPO
==========  ====================================================================  ============
"""

from grpokit.algorithms.policy_losses import cispo, clipped, gspo  # noqa: F401
from grpokit.algorithms.policy_losses.loss_inputs import (
    POLICY_LOSSES,
    LossSettings,
    PolicyLossInputs,
    clip_metrics,
    clipped_surrogate,
    finish,
    register_policy_loss,
    sequence_log_ratio,
)

__all__ = ["POLICY_LOSSES", "LossSettings", "PolicyLossInputs", "clip_metrics", "clipped_surrogate", "finish",
           "register_policy_loss", "sequence_log_ratio"]
