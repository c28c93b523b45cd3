"""CISPO (MiniMax-M1, 2025): clip the importance weight, not the update, so every token keeps a
gradient (PPO's clip zeroes the gradient of clipped tokens, which are often the rare
"reflection" tokens):

    loss_t = -sg[min(r_t, 1 + eps_high)] * A_t * log pi(o_t)

The weight is capped above at ``1 + epsilon_high`` and not bounded below, as the paper tunes
it. (TRL's ``loss_type="cispo"`` caps at ``epsilon_high`` itself: its epsilon_high 5.0 is this
loss's 4.0.) On-policy the weight is 1 and the gradient is REINFORCE's, -A per token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpokit.algorithms.policy_losses.loss_inputs import LossSettings, PolicyLossInputs, finish, register_policy_loss


@register_policy_loss("cispo")
def cispo_loss(inputs: PolicyLossInputs, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """Example (ratio e^1 = 2.718 is capped at 1.28, ratio 1 is not; A = 1 on both tokens):
        >>> lp = torch.tensor([[1.0, 0.0]], requires_grad=True)
        >>> x = PolicyLossInputs(lp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
        >>> loss, _ = cispo_loss(x, LossSettings(0.2, 0.28))
        >>> loss.sum().backward()
        >>> [round(g, 2) for g in lp.grad[0].tolist()]  # -weight * A
        [-1.28, -1.0]
    """
    ratio = torch.exp(inputs.logp - inputs.old_logp.detach())  # (B, T)
    weight = torch.clamp(ratio, max=1 + settings.epsilon_high).detach()  # (B, T)
    surrogate = -weight * inputs.advantages * inputs.logp  # (B, T)
    return finish(surrogate, ratio, inputs, settings)
