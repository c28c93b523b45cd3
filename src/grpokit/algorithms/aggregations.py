"""How per-token losses become the batch loss: per-token weights, so that

    batch loss = sum over tokens of weights * per_token_loss.

An aggregation is ``fn(mask, totals: BatchTotals) -> (n, T) weights`` for this process's rows;
the trainer computes the weights once per sampled batch, before splitting it into micro-batches,
so the summed loss and its gradients never depend on the micro-batch size. Under torchrun each
process's loss is its share of the global loss (the gradients are summed over processes).
Register one with ``@register_aggregation("name")``, select it with ``loss_type: name`` (TRL's
key), or name it by import path.

========  =================================================  ==============================
name      weight of a valid token of completion i            matches
========  =================================================  ==============================
grpo      1 / (|o_i| * B)                                    GRPO: sequence mean of token means
bnpo      1 / (valid tokens of this process * processes)     token mean per process, averaged
dapo      1 / (valid tokens of the global batch)             DAPO: token mean over the batch
dr_grpo   1 / (max_completion_length * B)                    Dr. GRPO: token sum / constant
========  =================================================  ==============================

B counts completions over all processes. On one process ``bnpo`` and ``dapo`` are equal; across
processes ``bnpo`` is TRL's local-batch normaliser and ``dapo`` its global one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grpokit.algorithms.registry import Registry

AGGREGATIONS = Registry("loss aggregation", "loss_type")
register_aggregation = AGGREGATIONS.register


@dataclass(frozen=True)
class BatchTotals:
    """The sampled batch's sizes over every process."""

    tokens: float
    """Valid (loss-mask) tokens."""
    rows: int
    """Completions."""
    processes: int = 1
    max_completion_length: int | None = None

    @classmethod
    def of(cls, mask: Tensor, max_completion_length: int | None = None) -> "BatchTotals":
        """The totals of one process's batch.

        >>> BatchTotals.of(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 2)
        BatchTotals(tokens=3.0, rows=2, processes=1, max_completion_length=2)
        """
        return cls(float(mask.sum()), mask.shape[0], 1, max_completion_length)


@register_aggregation("grpo")
def sequence_mean_weights(mask: Tensor, totals: BatchTotals) -> Tensor:
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (n, 1); empty rows have mask 0 anyway
    return mask / (lengths * totals.rows)  # (n, T)


@register_aggregation("bnpo")
def local_token_mean_weights(mask: Tensor, totals: BatchTotals) -> Tensor:
    return mask / (mask.sum().clamp(min=1) * totals.processes)  # (n, T)


@register_aggregation("dapo")
def global_token_mean_weights(mask: Tensor, totals: BatchTotals) -> Tensor:
    return mask / torch.as_tensor(totals.tokens, dtype=mask.dtype).clamp(min=1)  # (n, T)


@register_aggregation("dr_grpo")
def constant_sum_weights(mask: Tensor, totals: BatchTotals) -> Tensor:
    length = totals.max_completion_length
    if length is None or length < 1:
        raise ValueError(f"loss_type 'dr_grpo' needs max_completion_length >= 1, got {length!r}")
    return mask / (length * totals.rows)  # (n, T)


def token_weights(mask: Tensor, loss_type: str, totals: BatchTotals | None = None,
                  max_completion_length: int | None = None) -> Tensor:
    """Per-token weights ``(n, T)`` of the aggregation named ``loss_type`` (0 on padding).

    ``totals`` defaults to this batch alone (one process).

    Example (one group of 3 completions with 2, 1 and 2 tokens):
        >>> m = torch.tensor([[1, 1], [1, 0], [1, 1]])
        >>> token_weights(m, "grpo")
        tensor([[0.1667, 0.1667],
                [0.3333, 0.0000],
                [0.1667, 0.1667]])
        >>> token_weights(m, "dapo")
        tensor([[0.2000, 0.2000],
                [0.2000, 0.0000],
                [0.2000, 0.2000]])
    """
    mask = mask if mask.is_floating_point() else mask.float()  # (n, T)
    totals = totals or BatchTotals.of(mask, max_completion_length)
    return AGGREGATIONS.get(loss_type)(mask, totals)
