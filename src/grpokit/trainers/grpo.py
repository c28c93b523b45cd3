"""The GRPO trainer: sample groups, score them, take clipped policy-gradient steps.

One step (what ``max_steps`` counts):

1. take ``prompts_per_step`` (P) prompts and sample ``num_generations`` (G) completions each,
   every prompt encoded once with its KV cache shared by its G completions;
2. score the P·G completions with every reward function and sum them with ``reward_weights``;
3. turn the total into group-relative advantages (``scale_rewards``); with ``process_reward``,
   score each reasoning step and add per-token process advantages (DeepSeekMath §4.1.3), which
   replace the outcome ones when there are no reward functions;
4. take ``num_iterations`` (μ) optimizer steps on the whole batch, each accumulating gradients
   over micro-batches of ``micro_batch_size`` completions. Loss normalisers come from the full
   batch, so the micro-batch size bounds memory and never changes the math;
5. every ``ref_model_sync_steps`` steps move the reference model to the policy (iterative GRPO),
   then call each callback's ``on_step_end(trainer, step, batch, metrics)``.

Checkpoints, exact resume, skipped non-finite updates, ``request_stop`` and ``rollback`` come
from ``grpokit.trainers.loop.TrainingLoop``. Under torchrun each rank samples and scores its
share of the prompts, the loss weights come from the global batch's completion lengths, and the
step's metrics are reduced over ranks (``grpokit.distributed``).

The trainer is algorithm-blind: it hands log-probs, advantages, masks and token weights to
``grpokit.algorithms.policy_loss``; ``loss_type`` only picks the token weights by name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import set_seed

from grpokit.algorithms import (
    PolicyLossInputs,
    group_advantages,
    policy_loss,
    process_advantages,
    split_steps,
    step_end_tokens,
    token_weights,
)
from grpokit.config import GRPOConfig
from grpokit.distributed import add_stats, gather_rows, reduce_metrics, stats_across
from grpokit.engines import shard
from grpokit.errors import ConfigError
from grpokit.rewards import RewardBatch, reward_metrics, score_completions
from grpokit.rewards.process import resolve_process_reward, score_steps
from grpokit.rollout import Rollout
from grpokit.trainers.common import is_peft, resolve_model
from grpokit.trainers.optim import build_optimizer, clip_and_step
from grpokit.trainers.rollouts import RolloutTrainer


@dataclass
class StepBatch:
    """Everything the policy update needs from one sampled and scored batch (N = P·G rows)."""

    rollout: Rollout
    rewards: RewardBatch | None  # None when only a process reward is configured
    step_rewards: list[list[float]] | None  # one score per reasoning step, with process_reward
    advantages: torch.Tensor  # (N,), or (N, Tc) with process_reward
    loss_mask: torch.Tensor  # (N, Tc) completion tokens that enter the loss
    weights: torch.Tensor  # (N, Tc) per-token loss weights from the full batch
    ref_logp: torch.Tensor | None  # (N, Tc) or None when beta == 0


class GRPOTrainer(RolloutTrainer):
    """Train a causal LM with GRPO, with TRL's constructor and reward-function contract.

    ``model`` is a local model directory or a ``PreTrainedModel`` (then pass its tokenizer as
    ``processing_class``). ``reward_funcs`` are callables ``fn(prompts, completions, **kwargs)
    -> list[float | None]`` or registered names; ``train_dataset`` is a ``datasets.Dataset``,
    a list of dicts or a data file, with a ``prompt`` column (text or chat messages). Every
    other column reaches the reward functions as a keyword argument. ``reward_funcs`` may be
    empty when ``args.process_reward`` is set.

    ``callbacks`` are objects with an optional ``on_step_end(trainer, step, batch, metrics)``,
    called after every step (``step`` counts from 1, ``batch`` is the ``StepBatch``); keys they
    add to ``metrics`` are written to metrics.jsonl, and they may call ``trainer.request_stop(reason)``
    or ``trainer.rollback(lr_factor)``. Iterative reward-model training (DeepSeekMath Algorithm 1)
    hooks in here, with ``grpokit.algorithms.ReplayBuffer``.
    """

    stage = "grpo"

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, train_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None):
        self.args = args = args or GRPOConfig()
        self.init_rewards(reward_funcs, train_dataset, "GRPOTrainer")
        if not self.reward_funcs and args.process_reward is None:
            raise ConfigError("GRPOTrainer needs at least one reward function (or args.process_reward)")
        self.model, self.tokenizer, self.device = resolve_model(model, processing_class, args,
                                                                peft_config)
        # the reference: none without KL; the base with adapters off under LoRA; else a copy
        self.ref_model = self._frozen_copy() if args.beta > 0 and not is_peft(self.model) else None
        if args.ref_model_sync_steps and self.ref_model is None:
            raise ConfigError("ref_model_sync_steps needs its own reference model: set beta > 0 and "
                             "train without LoRA (under LoRA the reference is the adapter-free base)")
        self.process_reward = (resolve_process_reward(args.process_reward, self.device)
                               if args.process_reward else None)
        self.init_loop(callbacks)
        if self.engine.sharded:
            self.check_shardable()
            if self.ref_model is not None:
                shard(self.ref_model)
        self.init_sampling()

    def check_shardable(self) -> None:
        if is_peft(self.model):
            raise ConfigError("distributed: fsdp2 does not train LoRA adapters here; LoRA models fit "
                             "one device, so use distributed: ddp")
        if self.args.ref_model_sync_steps:
            raise ConfigError("distributed: fsdp2 does not support ref_model_sync_steps; use ddp")

    # ----------------------------------------------------------------- one step, as data
    def sample_and_score(self, rows: list[dict], timings: dict) -> StepBatch:
        """Sample G completions per row, score them, and compute advantages and weights."""
        args = self.args
        rollout = self.sample(rows, timings)
        started = time.perf_counter()
        texts = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        rewards = self.score(rows, rollout, texts) if self.reward_funcs else None
        advantages = self.outcome_advantages(rewards.total) if rewards is not None else None  # (N,)
        step_rewards = None
        if self.process_reward is not None:
            step_rewards, process = self.score_process(rows, rollout, texts)  # (N, Tc)
            advantages = process if advantages is None else advantages[:, None] + process
        timings["score"] = time.perf_counter() - started
        loss_mask = rollout.completion_mask.float()  # (N, Tc)
        if args.mask_truncated_completions:
            loss_mask = loss_mask * (~rollout.truncated).float()[:, None]
        weights = self.loss_weights(loss_mask)
        started = time.perf_counter()
        ref_logp = self.reference_logprobs(rollout) if args.beta > 0 else None
        timings["reference"] = time.perf_counter() - started
        return StepBatch(rollout, rewards, step_rewards, advantages, loss_mask, weights, ref_logp)

    def outcome_advantages(self, total: torch.Tensor) -> torch.Tensor:
        """Group-relative advantages ``(N,)`` of this rank's rows. A rank holds whole groups, so
        these need no communication, except ``scale_rewards: batch``, whose std is taken over
        every rank's rewards (gathered)."""
        args = self.args
        if not self.ranks.enabled or args.scale_rewards != "batch":
            return group_advantages(total, args.num_generations, args.scale_rewards)
        first = self.ranks.row_offset(total.shape[0])
        everything = gather_rows(total)  # (global N,)
        advantages = group_advantages(everything, args.num_generations, args.scale_rewards)
        return advantages[first : first + total.shape[0]]

    def loss_weights(self, loss_mask: torch.Tensor) -> torch.Tensor:
        """Per-token loss weights ``(N, Tc)`` of this rank's rows, normalised over the global
        batch: under torchrun from every rank's loss-mask lengths (masks are a prefix of ones)."""
        args = self.args
        if not self.ranks.enabled:
            return token_weights(loss_mask, args.loss_type, args.max_completion_length)
        lengths = gather_rows(loss_mask.sum(1).long())  # (global N,)
        width = max(int(lengths.max()), loss_mask.shape[1])
        mask = (torch.arange(width)[None, :] < lengths[:, None]).float()  # (global N, width)
        first = self.ranks.row_offset(loss_mask.shape[0])
        weights = token_weights(mask, args.loss_type, args.max_completion_length)
        return weights[first : first + loss_mask.shape[0], : loss_mask.shape[1]]

    def score(self, rows: list[dict], rollout: Rollout, texts: list[str]) -> RewardBatch:
        return score_completions(self.reward_funcs, completions=texts, weights=self.args.reward_weights,
                                 on_error=self.args.reward_errors, **self.reward_inputs(rows, rollout))

    def score_process(self, rows: list[dict], rollout: Rollout, texts: list[str]
                      ) -> tuple[list[list[float]], torch.Tensor]:
        """Score each reasoning step; return the scores and the (N, Tc) process advantages."""
        spans = [split_steps(text, self.args.step_separator) for text in texts]
        steps = [[text[start:end] for start, end in row] for text, row in zip(texts, spans)]
        inputs = self.reward_inputs(rows, rollout)
        scores = score_steps(self.process_reward, completions=texts, steps=steps, **inputs)
        ends = [step_end_tokens([end for _, end in row], self.decoded_length(ids), len(ids))
                for row, ids in zip(spans, inputs["completion_ids"])]
        return scores, process_advantages(scores, ends, self.args.num_generations,
                                          rollout.completion_ids.shape[1])

    def decoded_length(self, ids: list[int]):
        """``k -> len(decode(ids[:k]))``: maps character positions to tokens for any tokenizer."""
        return lambda k: len(self.tokenizer.decode(ids[:k], skip_special_tokens=True))

    def policy_pass(self, batch: StepBatch) -> dict:
        """One optimizer step on the whole batch; returns that pass's loss statistics and, under
        ``problem``, what was NaN/Inf when the update was skipped (else None)."""
        args, totals = self.args, {}
        plan = self.micro_batches(batch.rollout)
        for index, micro in enumerate(plan):
            with self.engine.micro_batch(last=index == len(plan) - 1):
                add_stats(totals, self.micro_batch_pass(batch, micro))
        totals = stats_across(totals)  # this rank's shares of the global loss and token sums
        totals["grad_norm"], totals["problem"] = clip_and_step(
            self.model, self.optimizer, self.scheduler, args.max_grad_norm, totals["loss"])
        return totals

    def micro_batch_pass(self, batch: StepBatch, micro) -> dict:
        """Forward and backward of one micro-batch; its loss statistics (sums)."""
        args = self.args
        logp, entropy = self._logprobs(self.model, batch.rollout, micro, with_entropy=True, training=True)
        rows, width = micro.rows, logp.shape[1]
        take = lambda t: t[rows, :width].to(self.device)  # noqa: E731
        old = logp.detach() if args.num_iterations == 1 else take(batch.rollout.sampling_logp)
        ref = take(batch.ref_logp) if batch.ref_logp is not None else None
        mask = take(batch.loss_mask)
        advantages = (take(batch.advantages) if batch.advantages.dim() == 2
                      else batch.advantages[rows].to(self.device))  # (n, w) or (n,)
        inputs = PolicyLossInputs(logp, old, advantages, mask, take(batch.weights), ref)
        loss, stats = policy_loss(inputs, epsilon_low=args.epsilon,
                                  epsilon_high=args.epsilon_high or args.epsilon,
                                  beta=args.beta,
                                  importance_sampling_level=args.importance_sampling_level,
                                  use_bias_correction_kl=args.use_bias_correction_kl)
        (loss * self.ranks.grad_scale).backward()
        return {**stats, "loss": loss.detach(), "entropy_sum": (entropy.detach() * mask).sum()}

    def updates(self, batch: StepBatch) -> list[dict]:
        """μ = ``num_iterations`` optimizer steps on the batch; then the iterative-GRPO reference sync."""
        passes = [self.policy_pass(batch) for _ in range(self.args.num_iterations)]
        if self.args.ref_model_sync_steps and (self.step_index + 1) % self.args.ref_model_sync_steps == 0:
            self.sync_reference()
        return passes

    def batch_metrics(self, batch: StepBatch, passes: list[dict], timings: dict) -> dict[str, float]:
        return reduce_metrics(step_metrics(batch, passes, timings, self.scheduler.get_last_lr()[0],
                                           self.args.num_generations))

    @torch.no_grad()
    def sync_reference(self) -> None:
        """reference ← α·policy + (1 − α)·reference, α = ``ref_model_mixup_alpha`` (1: a reset,
        DeepSeekMath Algorithm 1's π_ref ← π_θ at the start of each iteration)."""
        for ref, param in zip(self.ref_model.parameters(), self.model.parameters(), strict=True):
            ref.lerp_(param, self.args.ref_model_mixup_alpha)  # exactly param when α = 1

    # ----------------------------------------------------------------- the loop
    def train(self, show_progress: bool = True, resume_from_checkpoint: bool | str | None = None) -> dict:
        """Train for ``max_steps``; ``resume_from_checkpoint`` (True: the latest checkpoint in
        ``output_dir``, or a checkpoint path) continues an interrupted run exactly."""
        args = self.args
        self.write_run_files()
        set_seed(args.seed)  # python, numpy and torch: reward functions may draw too
        self.optimizer, self.scheduler = build_optimizer(self.model, args,
                                                         args.max_steps * args.num_iterations)
        self.model.train()
        seconds = self.run_loop("GRPO", show_progress, resume_from_checkpoint)
        model_dir = self.save_final_model(self.output_dir / "model")
        summary = {**summarize(self.history, seconds, model_dir), **self.loop_summary()}
        self.write_run_files(summary)
        return summary

    def status(self, metrics: dict[str, float]) -> str:
        return f"reward {headline_reward(metrics):.3f} kl {metrics['kl']:.4f}"

    def checkpoint_models(self) -> dict:
        """The reference moves with iterative GRPO, so it is saved then (``reference/``)."""
        return {"reference": self.ref_model} if self.args.ref_model_sync_steps else {}



def step_metrics(batch: StepBatch, passes: list[dict], timings: dict, lr: float,
                 group_size: int) -> dict[str, float]:
    """The per-step metrics written to metrics.jsonl."""
    rollout, adv = batch.rollout, batch.advantages
    if adv.dim() == 2:  # per-token advantages: summarise them over the completions' tokens
        adv = adv[rollout.completion_mask.bool()]
    lengths = rollout.completion_lengths().float()  # (N,)
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
        "completion/mean_length": lengths.mean().item(),
        "completion/min_length": lengths.min().item(),
        "completion/max_length": lengths.max().item(),
        "completion/truncated_frac": rollout.truncated.float().mean().item(),
        "learning_rate": lr, "grad_norm": sum(p["grad_norm"] for p in passes) / len(passes),
        **{f"time/{k}": v for k, v in timings.items()},
        "completion_tokens_per_s": lengths.sum().item() / timings["step"],
    }
    return metrics


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
