"""A GRPO step's metrics (rewards, advantages, lengths, clipping, KL, entropy, timings, the
sampler's batch) and the run's summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from grpokit.rewards import RewardBatch, reward_metrics

if TYPE_CHECKING:
    from grpokit.trainers.grpo import StepBatch


def step_metrics(batch: StepBatch, passes: list[dict], timings: dict, lr: float,
                 group_size: int) -> dict[str, float]:
    """The per-step metrics written to metrics.jsonl."""
    rollout = batch.rollout
    adv = batch.advantages[batch.loss_mask > 0]  # over the tokens that enter the loss
    if adv.numel() == 0:
        adv = batch.advantages.new_zeros(1)
    lengths = rollout.loss_tokens().sum(1).float()  # (N,) sampled tokens (environment tokens not, as TRL)
    tokens = max(sum(p["tokens"] for p in passes), 1.0)
    clip_units = max(sum(p["clip_units_sum"] for p in passes), 1.0)  # tokens, or sequences (GSPO)
    mean_over = lambda key, units=tokens: sum(p[key] for p in passes) / units  # noqa: E731
    metrics = {
        **(outcome_metrics(batch.rewards, group_size) if batch.rewards is not None else {}),
        **(process_metrics(batch.step_rewards) if batch.step_rewards is not None else {}),
        "advantage/mean": adv.mean().item(), "advantage/std": adv.std().item(),
        "advantage/min": adv.min().item(), "advantage/max": adv.max().item(),
        "loss": sum(p["loss"] for p in passes) / len(passes),
        "kl": mean_over("kl_sum"), "entropy": mean_over("entropy_sum"),
        # TRL's names and definitions (token means; sequence means at sequence level)
        "clip_ratio/low_mean": mean_over("clip_low_sum", clip_units),
        "clip_ratio/high_mean": mean_over("clip_high_sum", clip_units),
        "clip_ratio/region_mean": mean_over("clip_region_sum", clip_units),
        "clip_ratio/low_min": min(p["clip_low_min"] for p in passes),
        "clip_ratio/high_max": max(p["clip_high_max"] for p in passes),
        **({"sampling/importance_weight_max": max(p["sampler_weight_max"] for p in passes)}
           if "sampler_weight_max" in passes[0] else {}),
        **mismatch_metrics(passes[0]),
        "completion/mean_length": lengths.mean().item(),
        "completion/min_length": lengths.min().item(),
        "completion/max_length": lengths.max().item(),
        "completion/truncated_frac": rollout.truncated.float().mean().item(),
        "learning_rate": lr, "grad_norm": sum(p["grad_norm"] for p in passes) / len(passes),
        **{f"time/{k}": v for k, v in timings.items()},
        "completion_tokens_per_s": lengths.sum().item() / timings["step"],
        **({f"sampling/{k}": float(v) for k, v in batch.sampling.items()} if batch.sampling else {}),
    }
    return metrics


def mismatch_metrics(first_pass: dict) -> dict[str, float]:
    """How the sampler's log-probs differ from the trainer's forward before the update (the
    first pass): the mean |Δ log p| per token and the extremes of pi_trainer / pi_sampler.

    >>> mismatch_metrics({"mismatch_abs_sum": 0.5, "tokens": 10.0, "mismatch_ratio_max": 1.2, "mismatch_ratio_min": 0.9})
    {'mismatch/logp_abs_diff_mean': 0.05, 'mismatch/ratio_max': 1.2, 'mismatch/ratio_min': 0.9}
    """
    return {"mismatch/logp_abs_diff_mean": first_pass["mismatch_abs_sum"] / max(first_pass["tokens"], 1.0),
            "mismatch/ratio_max": first_pass["mismatch_ratio_max"],
            "mismatch/ratio_min": first_pass["mismatch_ratio_min"]}


def outcome_metrics(rewards: RewardBatch, group_size: int) -> dict[str, float]:
    """Reward means and stds, and the fraction of groups whose rewards are all equal."""
    groups = rewards.total.view(-1, group_size)  # (P, G)
    return {**reward_metrics(rewards),
            "reward/frac_zero_std": (groups.max(1).values == groups.min(1).values).float().mean().item()}


def process_metrics(step_rewards: list[list[float]]) -> dict[str, float]:
    """Mean and std of the step scores, and the mean number of steps per completion.

    >>> {k: round(v, 4) for k, v in process_metrics([[1.0, 0.0], [1.0]]).items()}
    {'process_reward/mean': 0.6667, 'process_reward/std': 0.5774, 'process_reward/steps': 1.5}
    """
    flat = torch.tensor([r for row in step_rewards for r in row], dtype=torch.float64)
    return {"process_reward/mean": flat.mean().item() if flat.numel() else math.nan,
            "process_reward/std": flat.std().item() if flat.numel() > 1 else math.nan,
            "process_reward/steps": flat.numel() / len(step_rewards)}


def headline_reward(metrics: dict[str, float]) -> float:
    """The reward shown and summarised: the outcome mean, else the process-reward mean."""
    return metrics["reward/mean"] if "reward/mean" in metrics else metrics["process_reward/mean"]


def summarize(history: list[dict], seconds: float, model_dir: Path) -> dict:
    """summary.json for a GRPO run: reward at the start and end, time, where the model is."""
    tail = history[-10:]
    return {
        "stage": "grpo",
        "steps": len(history),
        "seconds": seconds,
        "reward_first_step": headline_reward(history[0]),
        "reward_last_10_steps": sum(headline_reward(m) for m in tail) / len(tail),
        "model_dir": str(model_dir),
    }
