"""The clipped surrogate with a per-token importance ratio: GRPO (DeepSeekMath Eq. 3), PPO, and
DAPO's clip-higher when ``epsilon_high > epsilon_low``.

    loss_t = -min(r_t * A_t, clip(r_t, 1 - eps_low, 1 + eps_high) * A_t),   r_t = pi(o_t) / pi_old(o_t)
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpokit.algorithms.policy_losses.loss_inputs import (
    LossSettings,
    PolicyLossInputs,
    clipped_surrogate,
    finish,
    register_policy_loss,
)


@register_policy_loss("clip")
def clipped_loss(inputs: PolicyLossInputs, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """Example (on-policy, so the ratio is 1 and the loss of a token is -A; the gradient too):
        >>> lp = torch.zeros(1, 2, requires_grad=True)
        >>> x = PolicyLossInputs(lp, lp.detach(), torch.tensor([[1.0, -0.5]]), torch.ones(1, 2))
        >>> loss, metrics = clipped_loss(x, LossSettings(0.2, 0.2))
        >>> loss.sum().backward()
        >>> loss.tolist(), lp.grad.tolist(), metrics["tokens"].item()
        ([[-1.0, 0.5]], [[-1.0, 0.5]], 2.0)
    """
    ratio = torch.exp(inputs.logp - inputs.old_logp.detach())  # (B, T)
    surrogate = clipped_surrogate(ratio, inputs.advantages, settings.epsilon_low, settings.epsilon_high)
    return finish(surrogate, ratio, inputs, settings)
