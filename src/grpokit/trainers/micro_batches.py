"""How the completions of one step are split into micro-batches for the training forward.

Two plans give the same log-probs (and gradients); they differ in how many token positions
the model runs, counting padding:

- **groups** — micro-batches of whole groups; each group's prompt runs once and its G
  completions attend to it (shared prefix). Cost: prompt once per group + every row padded to
  the longest completion of its micro-batch.
- **sorted rows** — rows sorted by completion length, so rows of similar length share a
  micro-batch; each row carries its own prompt. Cost: every row padded to its micro-batch's
  longest prompt + longest completion.

Long prompts favour groups; short prompts with very uneven completion lengths favour sorted
rows. ``plan_micro_batches`` counts both and takes the cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MicroBatch:
    rows: torch.Tensor  # completion row indices
    shared_prefix: bool  # rows are whole groups, in order: run each prompt once


def group_plan(completion_lengths, prompt_lengths, group_size, micro_batch_size):
    """Micro-batches of whole groups and their cost in token positions."""
    groups_per_batch = max(micro_batch_size // group_size, 1)
    batches, cost = [], 0
    for first in range(0, len(prompt_lengths), groups_per_batch):
        groups = torch.arange(first, min(first + groups_per_batch, len(prompt_lengths)))
        rows = (groups[:, None] * group_size + torch.arange(group_size)).flatten()
        cost += len(groups) * int(prompt_lengths[groups].max())
        cost += len(rows) * int(completion_lengths[rows].max())
        batches.append(MicroBatch(rows, shared_prefix=True))
    return batches, cost


def sorted_plan(completion_lengths, prompt_lengths, group_size, micro_batch_size):
    """Micro-batches of rows sorted by completion length and their cost in token positions."""
    order = torch.argsort(completion_lengths, descending=True, stable=True)
    batches, cost = [], 0
    for start in range(0, len(order), micro_batch_size):
        rows = order[start : start + micro_batch_size].sort().values
        width = int(prompt_lengths[rows // group_size].max()) + int(completion_lengths[rows].max())
        cost += len(rows) * width
        batches.append(MicroBatch(rows, shared_prefix=False))
    return batches, cost


def plan_micro_batches(completion_lengths: torch.Tensor, prompt_lengths: torch.Tensor,
                       group_size: int, micro_batch_size: int) -> list[MicroBatch]:
    """The cheaper of the two plans (groups need ``micro_batch_size >= group_size``).

    >>> # 2 prompts of 100 tokens, G = 2: groups win (each prompt runs once)
    >>> [m.shared_prefix for m in plan_micro_batches(torch.tensor([5, 5, 5, 5]),
    ...                                              torch.tensor([100, 100]), 2, 2)]
    [True, True]
    >>> # short prompts, uneven completions: sorting pairs the two long rows
    >>> [m.rows.tolist() for m in plan_micro_batches(torch.tensor([90, 2, 3, 80]),
    ...                                             torch.tensor([4, 4]), 2, 2)]
    [[0, 3], [1, 2]]
    """
    candidates = [sorted_plan(completion_lengths, prompt_lengths, group_size, micro_batch_size)]
    if micro_batch_size >= group_size:
        candidates.append(group_plan(completion_lengths, prompt_lengths, group_size,
                                     micro_batch_size))
    return min(candidates, key=lambda plan: plan[1])[0]
