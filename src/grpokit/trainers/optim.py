"""AdamW and its learning-rate schedule from a config section."""

from __future__ import annotations

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


def clip_and_step(model, optimizer, scheduler, max_grad_norm: float) -> float:
    """Clip the gradient norm (0 = no clipping), step, zero grads; return the pre-clip norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    limit = max_grad_norm if max_grad_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
