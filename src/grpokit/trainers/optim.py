"""AdamW and its learning-rate schedule from a config section."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from grpokit.config import OptimConfig


def build_optimizer(
    model: torch.nn.Module, args: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters, with the schedule named by ``lr_scheduler_type``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.weight_decay,
    )
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def clip_and_step(model, optimizer, scheduler, max_grad_norm: float,
                  loss: float = 0.0) -> tuple[float, str | None]:
    """Clip the gradient norm (0 = no clipping), step, zero grads; return the pre-clip norm and
    what was non-finite (None when the update was taken).

    When ``loss`` or the gradient norm is NaN/Inf the update is skipped: the gradients are
    zeroed and neither the optimizer nor the schedule advances.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    limit = max_grad_norm if max_grad_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor
    problem = nonfinite_problem(loss, norm)
    if problem is None:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, problem


def nonfinite_problem(loss: float, grad_norm: float) -> str | None:
    """What is NaN/Inf among the loss and the gradient norm; None when both are finite.

    >>> nonfinite_problem(float("nan"), float("nan")), nonfinite_problem(0.5, float("inf"))
    ('loss is nan', 'gradient norm is inf')
    >>> nonfinite_problem(0.5, 2.0) is None
    True
    """
    for what, value in (("loss", loss), ("gradient norm", grad_norm)):
        if not math.isfinite(value):
            return f"{what} is {value}"
    return None


def scale_learning_rate(optimizer, scheduler, factor: float) -> None:
    """Multiply the learning rate of every param group, and the schedule's base rates, by
    ``factor`` (the schedule multiplies its base rates, so the change lasts)."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
