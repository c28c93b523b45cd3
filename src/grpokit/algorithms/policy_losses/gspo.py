"""GSPO (Zheng et al. 2025): one length-normalised importance ratio per sequence,

    s_i = exp(mean over the tokens of o_i of (log pi(o_t) - log pi_old(o_t))),

clipped like PPO's ratio; every token of the sequence shares it (``gspo``). ``gspo_token``
keeps that value but lets each token's gradient flow through its own log-prob,

    s_{i,t} = sg[s_i] * pi(o_t) / sg[pi(o_t)],

so per-token advantages can be used; with the advantage equal on every token of a completion it
is GSPO exactly (same loss, same gradient). Ranges are GSPO's scale: eps ~ 3e-4 to 4e-4.
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
    sequence_log_ratio,
)


@register_policy_loss("gspo")
def gspo_loss(inputs: PolicyLossInputs, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """Example (log-ratios 0.1 and 0.3: s = exp(0.2) = 1.2214 on both tokens; A = -1 is not
    clipped above, so each token's loss is s * 1):
        >>> lp = torch.tensor([[0.1, 0.3]], requires_grad=True)
        >>> x = PolicyLossInputs(lp, torch.zeros(1, 2), -torch.ones(1, 2), torch.ones(1, 2))
        >>> gspo_loss(x, LossSettings(0.2, 0.2))[0]
        tensor([[1.2214, 1.2214]], grad_fn=<NegBackward0>)
    """
    ratio = torch.exp(sequence_log_ratio(inputs.logp, inputs.old_logp, inputs.mask)).expand_as(inputs.logp)
    surrogate = clipped_surrogate(ratio, inputs.advantages, settings.epsilon_low, settings.epsilon_high)
    return finish(surrogate, ratio, inputs, settings, sequence_level=True)


@register_policy_loss("gspo_token")
def gspo_token_loss(inputs: PolicyLossInputs, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO's sequence ratio as every token's value, each token's own log-prob in its gradient."""
    sequence = torch.exp(sequence_log_ratio(inputs.logp, inputs.old_logp, inputs.mask)).detach()  # (B, 1)
    ratio = sequence * torch.exp(inputs.logp - inputs.logp.detach())  # (B, T), value = sequence ratio
    surrogate = clipped_surrogate(ratio, inputs.advantages, settings.epsilon_low, settings.epsilon_high)
    return finish(surrogate, ratio, inputs, settings, sequence_level=True)
