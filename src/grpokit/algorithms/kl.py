"""Per-token KL estimator used in the GRPO loss (DeepSeekMath Eq. 4, Schulman k3)."""

from __future__ import annotations

import torch
from torch import Tensor


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimate of KL(pi_theta || pi_ref), per token.

    With rho = pi_ref / pi_theta: k3 = rho - log(rho) - 1 >= 0. Unbiased when
    the tokens were sampled from pi_theta.

    Args:
        logp: (B, T) log-probs of the sampled tokens under the policy.
        ref_logp: (B, T) log-probs of the same tokens under the reference model.

    Returns:
        (B, T) elementwise k3 values, all >= 0 (padding is not masked here).

    Example (rho = 0.25 / 0.5 = 0.5, k3 = 0.5 - log 0.5 - 1):
        >>> k3_kl(torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3])))
        tensor([0.1931, 0.0000])
    """
    log_rho = ref_logp - logp  # (B, T)
    return torch.exp(log_rho) - log_rho - 1  # (B, T)
