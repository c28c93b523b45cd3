"""Means, variances and whitening over the valid (masked) positions of ``(N, T)`` tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1.

    >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1, 1, 0]]))
    tensor(1.5000)
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Bessel-corrected variance of ``values`` over positions where ``mask`` is 1.

    >>> masked_var(torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]))
    tensor(1.)
    """
    mask = mask.to(values.dtype)
    count = mask.sum()
    centered = (values - masked_mean(values, mask)) * mask
    return (centered**2).sum() / (count - 1).clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked positions; padding becomes 0.

    Mean 2 and (Bessel) variance 1 over the three real tokens:

    >>> masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]))
    tensor([[-1.,  0.,  1.,  0.]])
    """
    mask = mask.to(values.dtype)
    whitened = (values - masked_mean(values, mask)) * torch.rsqrt(masked_var(values, mask) + eps)
    return whitened * mask
