"""The engine a trainer's model runs under: one process, DDP, or FSDP2.

An :class:`Engine` answers the few questions whose answer depends on it:

- ``forward(fn, *inputs)`` — the training forward ``fn(model, *inputs)``. Under DDP it goes
  through ``DistributedDataParallel`` (the model wrapped in :class:`ForwardModule`, so the
  trainer's own forwards — shared prompt prefix, fused LM head — run inside DDP's forward);
- ``micro_batch(last)`` — a context for one micro-batch's forward and backward: under DDP,
  gradients are all-reduced only in the last micro-batch's backward (``no_sync`` before it);
- ``full_state_dict()`` / ``optimizer_state`` / ``load_*`` — checkpoints always hold full,
  unsharded tensors in the single-process format, so a checkpoint written by N processes
  loads in one and the other way round.

Under FSDP2 each decoder layer and then the whole model are ``fully_shard``-ed in place:
parameters, gradients and optimizer state are split over ranks, and every forward gathers a
layer's weights on the fly. All ranks must then run the same number of forwards, so the
training forward is the model's own (logits of the completion positions), and sampling decodes
in lockstep (:meth:`Engine.keep_decoding`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel

from grpokit.parallel.ranks import Ranks, any_across

STRATEGIES = ("ddp", "fsdp2")


class ForwardModule(torch.nn.Module):
    """A model whose ``forward(fn, *inputs, **kw)`` is ``fn(model, *inputs, **kw)``.

    DDP hooks gradients through its own forward; wrapping the model this way lets any training
    forward (several calls of the model's body, a custom LM head) be that forward.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *inputs, **kwargs):
        return fn(self.model, *inputs, **kwargs)


class Engine:
    """One process (``strategy=None`` or a single rank), DDP or FSDP2 for ``model``."""

    def __init__(self, model: torch.nn.Module, ranks: Ranks, strategy: str = "ddp"):
        if strategy not in STRATEGIES:
            raise ValueError(f"distributed: expected one of {STRATEGIES}, got {strategy!r}")
        self.model, self.ranks = model, ranks
        self.strategy = strategy if ranks.enabled else None
        self.ddp = None
        if self.strategy == "ddp":
            device_ids = [model.device.index] if model.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(ForwardModule(model), device_ids=device_ids)
        elif self.strategy == "fsdp2":
            shard(model)

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp2"

    def forward(self, fn, *inputs, **kwargs):
        """``fn(model, *inputs, **kwargs)`` as the training forward of this engine."""
        if self.ddp is not None:
            return self.ddp(fn, *inputs, **kwargs)
        return fn(self.model, *inputs, **kwargs)

    def micro_batch(self, last: bool):
        """Context for one micro-batch's forward and backward (DDP syncs in the last one)."""
        return self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()

    def keep_decoding(self):
        """For ``generate``: under FSDP2, decode until every rank's rows are done."""
        return (lambda done: any_across(not done)) if self.sharded else None

    # ---------------------------------------------------------------- state for checkpoints
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on the CPU for saving (all ranks must call it under FSDP2; only rank 0
        gets them), or None when the model saves itself (one process, DDP)."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                          cpu_offload=True))
        # a tied weight (the LM head sharing the input embedding) is saved once, as HF does
        own = {name for name, _ in self.model.named_parameters()} | {name for name, _ in self.model.named_buffers()}
        return {name: tensor for name, tensor in full.items() if name in own}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state in ``optimizer.state_dict()``'s format (full under FSDP2)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        named = get_optimizer_state_dict(self.model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return indexed_optimizer_state(named, trainable_names(self.model)) if named else {}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, optimizer, named_optimizer_state(state, trainable_names(self.model)),
                                 options=StateDictOptions(full_state_dict=True))

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy full weights (every rank holds them) into the sharded model."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def shard(model: torch.nn.Module) -> None:
    """``fully_shard`` each decoder layer, then the model (embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.get_decoder().layers:
        fully_shard(layer)
    fully_shard(model)


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters an optimizer built from ``model.parameters()`` (trainable ones)
    holds, in its order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def indexed_optimizer_state(named: dict, names: list[str]) -> dict:
    """A ``{"state": {name: ...}, "param_groups": [{"params": [name, ...]}]}`` optimizer state
    in ``optimizer.state_dict()``'s format, parameters numbered in ``names`` order.

    >>> named = {"state": {"b": {"step": 1}}, "param_groups": [{"lr": 0.1, "params": ["a", "b"]}]}
    >>> indexed_optimizer_state(named, ["a", "b"])
    {'state': {1: {'step': 1}}, 'param_groups': [{'lr': 0.1, 'params': [0, 1]}]}
    """
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[name]: value for name, value in named["state"].items()},
            "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                             for group in named["param_groups"]]}


def named_optimizer_state(indexed: dict, names: list[str]) -> dict:
    """The inverse of :func:`indexed_optimizer_state`.

    >>> indexed = {"state": {1: {"step": 1}}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    >>> named_optimizer_state(indexed, ["a", "b"])
    {'state': {'b': {'step': 1}}, 'param_groups': [{'lr': 0.1, 'params': ['a', 'b']}]}
    """
    return {"state": {names[i]: value for i, value in indexed["state"].items()},
            "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                             for group in indexed["param_groups"]]}
