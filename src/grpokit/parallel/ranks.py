"""Several processes training one model, launched by ``torchrun`` (``torch.distributed``).

Every trainer works the same way on one process or on N:

- **data**: each rank draws the same global batch (same seed, same data position) and keeps its
  contiguous share (:meth:`Ranks.shard`). GRPO's prompts are split whole, so a group's G
  completions are sampled, scored and normalised on one rank and advantages need no
  communication;
- **sampling**: the random numbers of the whole global batch are drawn on every rank and each
  rank uses its rows, so what is sampled does not depend on the number of ranks;
- **loss**: advantages that need batch statistics are estimated on the gathered batch
  (:func:`gather_advantage_inputs`), token weights use the global batch's token and row counts,
  and each rank's loss is its share of the global loss; the engine
  averages gradients over ranks, so the backward pass scales the share by N
  (:attr:`Ranks.grad_scale`);
- **engines**: DDP (``distributed: ddp``) or FSDP2 (``distributed: fsdp2``, ``fully_shard`` per
  decoder layer), see :func:`wrap_for_training`;
- **output**: metrics are reduced across ranks (:func:`reduce_metrics`) before anything sees
  them, so alert rules decide alike everywhere; only rank 0 writes files.

The process group is created on first use (:func:`setup`) with NCCL on CUDA and gloo on CPU,
and a timeout (``distributed_timeout``) after which a collective that waits on a dead rank fails.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from grpokit.algorithms.estimators import AdvantageInputs
from grpokit.errors import Terminated


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among ``world_size`` processes.

    >>> ranks = Ranks(rank=1, world_size=2)
    >>> ranks.shard(["a", "b", "c", "d"]), ranks.row_offset(2), ranks.is_main
    (['c', 'd'], 2, False)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def grad_scale(self) -> float:
        """What a rank's share of the loss is multiplied by before backward: the engines
        average gradients over ranks, and the global gradient is their sum."""
        return float(self.world_size)

    def shard(self, items: list) -> list:
        """This rank's contiguous share of a global batch (its length must divide evenly)."""
        if len(items) % self.world_size:
            raise ValueError(f"a batch of {len(items)} cannot be split evenly over {self.world_size} "
                             f"processes: make it a multiple of the number of processes")
        size = len(items) // self.world_size
        return items[self.rank * size : (self.rank + 1) * size]

    def row_offset(self, local_rows: int) -> int:
        """The global index of this rank's first row, every rank holding ``local_rows``."""
        return self.rank * local_rows


def raise_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated`, so the process says why it stops (and an
    interrupted checkpoint write cleans up after itself) instead of vanishing."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated("stopped by SIGTERM")
    signal.signal(signal.SIGTERM, handler)


def launched() -> bool:
    """True in a process that ``torchrun`` started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_local_depth = 0  # > 0 inside local_only()


@contextmanager
def local_only():
    """Within it this process acts alone (``ranks()`` is a single process): for work rank 0
    does while the others wait, such as a pipeline's rejection sampling or evaluation."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def ranks() -> Ranks:
    """This process's place; a single process when no process group exists (or inside
    :func:`local_only`)."""
    if _local_depth or not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup(timeout_seconds: float) -> Ranks:
    """Join the process group ``torchrun`` describes (once per process); a no-op otherwise."""
    if launched() and not _local_depth and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_seconds))
    return ranks()


def local_device() -> torch.device:
    """This process's CUDA device (``cuda:LOCAL_RANK``), or the CPU when there is no GPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _collective_device() -> torch.device:
    return local_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if ranks().enabled:
        dist.barrier()


def main_first(fn):
    """``fn()`` on rank 0, then on the others once rank 0 is done: for work whose result rank 0
    leaves on disk for them (creating the base model, say)."""
    if ranks().is_main:
        result = fn()
        barrier()
        return result
    barrier()
    return fn()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over ranks (one all-reduce); unchanged on a single process."""
    if not ranks().enabled or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def stats_across(values: dict[str, float]) -> dict[str, float]:
    """Loss statistics combined over ranks: keys ending in ``_min`` take the minimum, ``_max``
    the maximum, the others the sum; unchanged on a single process."""
    if not ranks().enabled or not values:
        return dict(values)
    combined = sum_across({k: v for k, v in values.items() if not k.endswith(("_min", "_max"))})
    for suffix, op in (("_min", dist.ReduceOp.MIN), ("_max", dist.ReduceOp.MAX)):
        keys = sorted(k for k in values if k.endswith(suffix))
        if keys:
            tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                                  device=_collective_device())
            dist.all_reduce(tensor, op=op)
            combined.update(zip(keys, tensor.tolist()))
    return combined


def add_stats(totals: dict[str, float], stats: dict) -> dict[str, float]:
    """One micro-batch's statistics folded into ``totals`` (``_min``/``_max`` keys by min/max,
    the rest summed).

    >>> add_stats({"n_sum": 2.0, "a_max": 0.5}, {"n_sum": 1.0, "a_max": 0.25})
    {'n_sum': 3.0, 'a_max': 0.5}
    """
    for key, value in stats.items():
        value = float(value)
        if key not in totals:
            totals[key] = value
        elif key.endswith("_min"):
            totals[key] = min(totals[key], value)
        elif key.endswith("_max"):
            totals[key] = max(totals[key], value)
        else:
            totals[key] += value
    return totals


def any_across(flag: bool) -> bool:
    """True when ``flag`` is True on any rank."""
    if not ranks().enabled:
        return flag
    tensor = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (the same shape everywhere), concatenated in rank order."""
    if not ranks().enabled:
        return rows
    local = rows.to(_collective_device())
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(rows.device)


def gather_lists(values: list) -> list:
    """Every rank's list of plain values, concatenated in rank order."""
    if not ranks().enabled:
        return list(values)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(values))
    return [v for part in parts for v in part]


def combine_metrics(per_rank: list[dict]) -> dict:
    """One metrics dict from every rank's: ``*/min``, ``*/min_*`` the minimum, ``*/max``,
    ``*/max_*`` the maximum, ``time/*`` the slowest rank, ``*_per_s`` the sum, other numbers the
    mean (exact for means over equal shares; an approximation for stds); text from rank 0.

    >>> combine_metrics([{"reward/mean": 1.0, "completion/max_length": 2.0, "tokens_per_s": 10.0},
    ...                  {"reward/mean": 0.0, "completion/max_length": 3.0, "tokens_per_s": 12.0}])
    {'reward/mean': 0.5, 'completion/max_length': 3.0, 'tokens_per_s': 22.0}
    """
    combined = {}
    for key, first in per_rank[0].items():
        values = [m[key] for m in per_rank if key in m]
        leaf = key.rsplit("/", 1)[-1]
        if not isinstance(first, (int, float)) or isinstance(first, bool):
            combined[key] = first
        elif leaf == "min" or leaf.startswith("min_") or leaf.endswith("_min"):
            combined[key] = min(values)
        elif leaf == "max" or leaf.startswith("max_") or leaf.endswith("_max") or key.startswith("time/"):
            combined[key] = max(values)
        elif key.endswith("_per_s"):
            combined[key] = sum(values)
        else:
            combined[key] = sum(values) / len(values)
    return combined


def reduce_metrics(metrics: dict) -> dict:
    """``metrics`` combined over ranks (:func:`combine_metrics`); unchanged on one process."""
    if not ranks().enabled:
        return metrics
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, metrics)
    return combine_metrics(parts)


def gather_advantage_inputs(inputs: AdvantageInputs) -> tuple[AdvantageInputs, slice]:
    """Every rank's ``AdvantageInputs`` (outcome rewards, loss-mask lengths, step scores) as one
    global batch, and the slice of its rows that is this rank's; on one process, ``inputs``
    itself. Ranks may hold different numbers of rows (dynamic sampling)."""
    if not ranks().enabled:
        return inputs, slice(None)
    sizes = gather_lists([inputs.mask.shape[0]])
    first = sum(sizes[: ranks().rank])
    lengths = torch.tensor(gather_lists(inputs.mask.sum(1).long().tolist()))  # masks are a prefix of ones
    width = max(int(lengths.max()), inputs.mask.shape[1])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(inputs.mask.dtype)
    group = inputs.group_size
    rewards = (torch.tensor(gather_lists(inputs.rewards.tolist()), dtype=inputs.rewards.dtype)
               if inputs.rewards is not None else None)
    steps = (gather_lists(inputs.step_rewards), gather_lists(inputs.step_ends)) if inputs.step_rewards else (None, None)
    everything = AdvantageInputs(rewards, torch.arange(mask.shape[0]) // group, mask, *steps)
    return everything, slice(first, first + inputs.mask.shape[0])
