"""The GRPO trainer: sample groups, score them, take clipped policy-gradient steps.

One step (what ``max_steps`` counts) is :meth:`GRPOTrainer.step`, read top to bottom:

1. **sample**: ``prompts_per_step`` (P) prompts, ``num_generations`` (G) completions each, every
   prompt encoded once with its KV cache shared by its G completions;
2. **score**: every reward function, summed with ``reward_weights`` (and the process reward's
   step scores with ``process_reward``); with ``dynamic_sampling: refill`` groups whose rewards
   are all equal are dropped and more prompts sampled, up to ``max_sampling_rounds`` rounds;
3. **advantages**: the ``advantage_estimator`` (per token); ``dynamic_sampling: drop`` drops
   the groups left without any (a batch where no group has any is kept whole);
4. **reference**: the frozen reference's log-probs when ``beta > 0``, and the loss weights of the
   ``loss_type`` aggregation from the whole batch;
5. **update**: ``num_iterations`` (μ) optimizer steps on the whole batch, each accumulating
   gradients over micro-batches of ``micro_batch_size`` completions (the ``policy_loss``);
   weights come from the full batch, so the micro-batch size bounds memory and never changes
   the math; then every ``ref_model_sync_steps`` steps the reference moves to the policy;
6. **metrics**, then each callback's ``on_step_end(trainer, step, batch, metrics)``.

The trainer names no algorithm: the estimator, the loss and the aggregation come from their
registries (``grpokit.algorithms``) by the config's names. Checkpoints, exact resume, skipped
non-finite updates, ``request_stop`` and ``rollback`` come from
``grpokit.trainers.loop.TrainingLoop``. Under torchrun each rank samples and scores its share of
the prompts, estimates advantages on the gathered batch, weighs tokens by the global batch's
totals, and the step's metrics are reduced over ranks (``grpokit.parallel.ranks``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from transformers import set_seed

from grpokit.agents.multi_turn import episode_metrics
from grpokit.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    POLICY_LOSSES,
    AdvantageInputs,
    BatchTotals,
    LossSettings,
    PolicyLossInputs,
)
from grpokit.algorithms.dynamic_sampling import group_rows, groups_with_advantage, groups_with_varied_rewards
from grpokit.algorithms.sampler_correction import mismatch_stats, truncated_importance_weights
from grpokit.config import GRPOConfig
from grpokit.parallel.ranks import add_stats, any_across, gather_advantage_inputs, reduce_metrics, stats_across, sum_across
from grpokit.parallel.training_engine import shard
from grpokit.errors import ConfigError
from grpokit.rewards import RewardBatch, score_completions
from grpokit.rewards.step_scores import StepScorer, resolve_process_reward
from grpokit.sampling.sampler import Rollout, concat_rollouts, select_groups
from grpokit.models.for_training import is_peft, resolve_model
from grpokit.trainers.optim import build_optimizer, clip_and_step
from grpokit.trainers.grpo_metrics import headline_reward, step_metrics, summarize
from grpokit.trainers.on_policy import OnPolicyTrainer


@dataclass
class Scored:
    """A sampled batch and its scores (N = P·G rows, groups contiguous)."""

    rollout: Rollout
    rewards: RewardBatch | None  # None when only a process reward is configured
    step_rewards: list[list[float]] | None = None  # one score per reasoning step, with process_reward
    step_ends: list[list[int]] | None = None  # the token each step ends in
    prompts_drawn: int = 0  # prompts sampled for this batch (more than P with refill)

    def groups(self, keep: torch.Tensor) -> "Scored":
        """The groups where ``keep`` (``(n_groups,)`` bool) holds."""
        groups, rows = keep.nonzero().flatten(), group_rows(keep, self.rollout.group_size)
        pick = lambda items: [items[i] for i in rows.tolist()] if items is not None else None  # noqa: E731
        rewards = (replace(self.rewards, per_func=self.rewards.per_func[rows], total=self.rewards.total[rows])
                   if self.rewards is not None else None)
        return Scored(select_groups(self.rollout, groups), rewards, pick(self.step_rewards),
                      pick(self.step_ends), self.prompts_drawn)


def concat_scored(parts: list[Scored]) -> Scored:
    """One batch of several rounds' kept groups."""
    if len(parts) == 1:
        return parts[0]
    rewards = None
    if parts[0].rewards is not None:
        first = parts[0].rewards
        errors = ({name: sum(p.rewards.errors[name] for p in parts) for name in first.errors}
                  if first.errors is not None else None)
        rewards = RewardBatch(torch.cat([p.rewards.per_func for p in parts]),
                              torch.cat([p.rewards.total for p in parts]), first.names, errors)
    join = lambda key: None if getattr(parts[0], key) is None else [x for p in parts for x in getattr(p, key)]  # noqa: E731
    return Scored(concat_rollouts([p.rollout for p in parts]), rewards, join("step_rewards"), join("step_ends"),
                  sum(p.prompts_drawn for p in parts))


@dataclass
class StepBatch:
    """Everything the policy update needs from one sampled and scored batch (N rows)."""

    rollout: Rollout
    rewards: RewardBatch | None  # None when only a process reward is configured
    step_rewards: list[list[float]] | None  # one score per reasoning step, with process_reward
    advantages: torch.Tensor  # (N, Tc) per-token advantages
    loss_mask: torch.Tensor  # (N, Tc) completion tokens that enter the loss
    weights: torch.Tensor  # (N, Tc) per-token loss weights from the full batch
    ref_logp: torch.Tensor | None  # (N, Tc) or None when beta == 0
    old_logp: torch.Tensor | None = None  # (N, Tc) the policy's own, when the sampler's are corrected
    sampling: dict | None = None  # prompts drawn, groups kept and dropped, rounds


class GRPOTrainer(OnPolicyTrainer):
    """Train a causal LM with GRPO, with TRL's constructor and reward-function contract.

    ``model`` is a local model directory or a ``PreTrainedModel`` (then pass its tokenizer as
    ``processing_class``). ``reward_funcs`` are callables ``fn(prompts, completions, **kwargs)
    -> list[float | None]`` or registered names; ``train_dataset`` is a ``datasets.Dataset``,
    a list of dicts or a data file, with a ``prompt`` column (text or chat messages). Every
    other column reaches the reward functions as a keyword argument. ``reward_funcs`` may be
    empty when ``args.process_reward`` is set.

    ``tools`` (TRL's) are functions, plain or ``async``, with type hints and Google-style
    docstrings (their schemas reach the chat template), or their import paths; with tools every
    completion is a multi-turn episode (``grpokit.agents``). ``environment_factory`` (TRL's) makes
    one stateful environment per episode: ``reset(**row)`` starts it, its public methods are its
    tools, an optional ``get_reward()`` scores it; then ``train_dataset`` may be omitted (the
    environment writes the prompt). ``rollout_func(prompts, trainer)`` (TRL's) replaces the
    sampler (``grpokit.agents.rollout_function``). A verifiers environment
    (``vf.load_environment(...)``'s ``SingleTurnEnv``, ``MultiTurnEnv``, ``ToolEnv``) goes where
    ``environment_factory`` goes and trains unchanged (``grpokit.agents.verifiers_env``).

    ``callbacks`` are objects with an optional ``on_step_end(trainer, step, batch, metrics)``,
    called after every step (``step`` counts from 1, ``batch`` is the ``StepBatch``); keys they
    add to ``metrics`` are written to metrics.jsonl, and they may call ``trainer.request_stop(reason)``
    or ``trainer.rollback(lr_factor)``. Iterative reward-model training (DeepSeekMath Algorithm 1)
    hooks in here, with ``grpokit.algorithms.ReplayBuffer``.
    """

    stage = "grpo"
    uses_rollout_engines = True

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, train_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None, tools=None,
                 environment_factory=None, rollout_func=None):
        self.args = args = args or GRPOConfig()
        self.init_agents(tools or [], environment_factory, rollout_func)
        if train_dataset is None:  # an environment may own the data
            train_dataset = self.agents.own_rows(args.prompts_per_step)
        self.init_rewards(reward_funcs, train_dataset, "GRPOTrainer")
        self.add_agent_reward()
        if not self.reward_funcs and args.process_reward is None:
            raise ConfigError("GRPOTrainer needs at least one reward function (or args.process_reward, or an "
                              "environment with a get_reward method)")
        self.estimator = ADVANTAGE_ESTIMATORS.get(args.advantage_estimator)
        self.policy_loss = POLICY_LOSSES.get(args.policy_loss)
        self.aggregation = AGGREGATIONS.get(args.loss_type)
        self.loss_settings = LossSettings(args.epsilon, args.epsilon_high or args.epsilon, args.beta,
                                          args.use_bias_correction_kl)
        self.model, self.tokenizer, self.device = resolve_model(model, processing_class, args,
                                                                peft_config)
        self.processing_class = self.tokenizer  # TRL's name, for rollout functions written for TRL
        # the reference: none without KL; the base with adapters off under LoRA; else a copy
        self.ref_model = self._frozen_copy() if args.beta > 0 and not is_peft(self.model) else None
        if args.ref_model_sync_steps and self.ref_model is None:
            raise ConfigError("ref_model_sync_steps needs its own reference model: set beta > 0 and "
                             "train without LoRA (under LoRA the reference is the adapter-free base)")
        if args.process_steps == "turns" and not self.agents.replaces_sampler:
            raise ConfigError("process_steps: turns scores each model turn of an episode; give tools, an "
                              "environment or a rollout_func (without them a completion is one turn), or use "
                              "process_steps: separator")
        self.step_scorer = (StepScorer(resolve_process_reward(args.process_reward, self.device), args.step_separator)
                            if args.process_reward else None)
        # the sampler correction: on by default when the samples come from another engine or an
        # older policy (TRL corrects vLLM's samples by default too)
        other_sampler = args.rollout.engine != "native" or args.rollout.max_staleness > 0
        self.tis_cap = None if args.tis_mode == "off" else args.tis_cap or (2.0 if other_sampler else None)
        self.rollout_metrics = {}
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

    # ----------------------------------------------------------------- one step, top to bottom
    def step(self) -> dict[str, float]:
        """Sample, score and learn from one batch of ``prompts_per_step`` prompts."""
        args, timings, started = self.args, {}, time.perf_counter()
        batch = self.sample_batch(timings)  # 1-4: sample, score, advantages, reference

        # 5. update: μ optimizer steps on the whole batch ---------------------------------------
        tic = time.perf_counter()
        passes = [self.policy_pass(batch) for _ in range(args.num_iterations)]
        if args.ref_model_sync_steps and (self.step_index + 1) % args.ref_model_sync_steps == 0:
            self.sync_reference()
        timings["train"] = time.perf_counter() - tic
        timings["step"] = time.perf_counter() - started

        self.step_index += 1
        self.publish_weights()  # for the rollouts sampled ahead (rollout.max_staleness)

        # 6. metrics ----------------------------------------------------------------------------
        metrics = reduce_metrics({**step_metrics(batch, passes, timings, self.scheduler.get_last_lr()[0],
                                                 args.num_generations),
                                  **episode_metrics(self.agents.stats, batch.rollout), **self.rollout_metrics})
        problem = next((p["problem"] for p in passes if p["problem"]), None)
        return self.end_step(batch, metrics, problem)

    def sample_batch(self, timings: dict) -> StepBatch:
        """Steps 1-4 of :meth:`step`: the sampled, scored batch with its advantages, reference
        log-probs and loss weights."""
        args = self.args

        # 1-2. sample and score (more rounds with dynamic_sampling: refill) -------------------
        scored, rounds = self.sample_and_score(timings)
        rollout = scored.rollout

        # 3. advantages -----------------------------------------------------------------------
        loss_mask = rollout.loss_tokens().float()  # (N, Tc): multi-turn episodes train on sampled tokens only
        if args.mask_truncated_completions:
            loss_mask = loss_mask * (~rollout.truncated).float()[:, None]
        advantages = self.advantages(scored, loss_mask)  # (N, Tc)
        keep = (groups_with_advantage(advantages, loss_mask, rollout.group_size)
                if args.dynamic_sampling == "drop" else None)  # (n_groups,)
        if keep is not None and keep.any():  # a batch with no signal at all stays whole
            rows = group_rows(keep, rollout.group_size)
            scored, advantages, loss_mask = scored.groups(keep), advantages[rows], loss_mask[rows]
            rollout = scored.rollout
        sampling = {"prompts_drawn": scored.prompts_drawn, "groups_kept": rollout.num_completions // rollout.group_size,
                    "rounds": rounds}

        # 4. reference log-probs and loss weights ----------------------------------------------
        tic = time.perf_counter()
        ref_logp = self.reference_logprobs(rollout) if args.beta > 0 else None
        # the sampler's log-probs are corrected against the policy's own (TIS); with μ = 1 those
        # are the training forward's, otherwise one no-grad pass before the first update
        old_logp = self.policy_logprobs(rollout) if self.tis_cap and args.num_iterations > 1 else None
        timings["reference"] = time.perf_counter() - tic
        weights = self.loss_weights(loss_mask)  # (N, Tc)
        return StepBatch(rollout, scored.rewards, scored.step_rewards, advantages, loss_mask, weights,
                         ref_logp, old_logp, sampling)

    # ----------------------------------------------------------------- the stages
    def sample_and_score(self, timings: dict) -> tuple[Scored, int]:
        """This rank's share of P prompts, sampled and scored; with ``dynamic_sampling: refill``,
        only groups whose rewards differ, drawing more rounds of P prompts until this rank has its
        share or ``max_sampling_rounds`` were drawn (every rank draws as many rounds)."""
        args, kept, rounds = self.args, [], 0
        needed = args.prompts_per_step // self.ranks.world_size
        while True:
            rows, rollout, self.rollout_metrics = self.draw_and_sample(timings)
            tic = time.perf_counter()
            scored = self.score(rows, rollout)
            timings["score"] = timings.get("score", 0.0) + time.perf_counter() - tic
            rounds += 1
            if args.dynamic_sampling != "refill":
                return scored, rounds
            kept.append(scored.groups(groups_with_varied_rewards(scored.rewards.total, rollout.group_size)))
            have = sum(k.rollout.num_completions for k in kept) // rollout.group_size
            if not any_across(have < needed) or rounds >= args.max_sampling_rounds:
                break
        if have == 0:  # no group with signal in any round: train on the last one as it is
            return scored, rounds
        batch = concat_scored(kept)
        keep = torch.arange(batch.rollout.num_completions // rollout.group_size) < needed
        return batch.groups(keep), rounds

    def score(self, rows: list[dict], rollout: Rollout) -> Scored:
        """Every reward function on the completions, and the process reward's step scores."""
        texts = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        inputs = self.reward_inputs(rows, rollout)
        completions = rollout.conversations or texts  # an episode's messages, as TRL gives them
        rewards = (score_completions(self.reward_funcs, completions=completions, weights=self.reward_weights,
                                     on_error=self.args.reward_errors, **inputs)
                   if self.reward_funcs else None)
        steps = (None, None) if self.step_scorer is None else self.score_steps(texts, rollout, inputs)
        return Scored(rollout, rewards, *steps, prompts_drawn=len(rows))

    def score_steps(self, texts: list[str], rollout: Rollout, inputs: dict):
        """The process reward's scores and step-end tokens: per step of text, or with
        ``process_steps: turns`` per model turn of each episode."""
        if self.args.process_steps == "separator":
            return self.step_scorer(texts, tokenizer=self.tokenizer, **inputs)
        lengths = rollout.completion_lengths().tolist()
        masks = [row[:n] for row, n in zip(rollout.loss_tokens().tolist(), lengths)]
        return self.step_scorer.score_turns(texts, sampled_masks=masks, tokenizer=self.tokenizer, **inputs)

    def advantages(self, scored: Scored, loss_mask: torch.Tensor) -> torch.Tensor:
        """The estimator's per-token advantages ``(N, Tc)`` of this rank's rows, estimated on the
        gathered global batch under torchrun (batch statistics see every rank's rewards)."""
        rollout = scored.rollout
        group_ids = torch.arange(rollout.num_completions) // rollout.group_size
        inputs = AdvantageInputs(scored.rewards.total if scored.rewards is not None else None, group_ids,
                                 loss_mask, scored.step_rewards, scored.step_ends)
        everything, mine = gather_advantage_inputs(inputs)
        return self.estimator(everything, self.args)[mine, : loss_mask.shape[1]].float()

    def loss_weights(self, loss_mask: torch.Tensor) -> torch.Tensor:
        """Per-token loss weights ``(N, Tc)`` of this rank's rows from the global batch's totals."""
        totals = sum_across({"tokens": float(loss_mask.sum()), "rows": float(loss_mask.shape[0])})
        return self.aggregation(loss_mask, BatchTotals(totals["tokens"], int(totals["rows"]),
                                                       self.ranks.world_size, self.args.max_completion_length))

    @torch.no_grad()
    def policy_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """The policy's log-probs ``(N, Tc)`` of the sampled tokens before any update (no grad)."""
        old = torch.zeros(rollout.completion_ids.shape)
        for micro in self.micro_batches(rollout):
            logp = self._logprobs(self.model, rollout, micro, False)[0]
            old[micro.rows, : logp.shape[1]] = logp.float().cpu()
        return old

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
        if batch.old_logp is not None:
            old = take(batch.old_logp)
        else:
            old = logp.detach() if args.num_iterations == 1 else take(batch.rollout.sampling_logp)
        mask, sampler_logp = take(batch.loss_mask), take(batch.rollout.sampling_logp)
        sampler_weights = (truncated_importance_weights(old, sampler_logp, mask, self.tis_cap, args.tis_mode)
                           if self.tis_cap else None)
        inputs = PolicyLossInputs(logp, old, take(batch.advantages), mask,
                                  take(batch.ref_logp) if batch.ref_logp is not None else None, sampler_weights)
        per_token, stats = self.policy_loss(inputs, self.loss_settings)
        loss = (per_token * take(batch.weights)).sum()
        (loss * self.ranks.grad_scale).backward()
        # against this pass's forward: on the first pass the policy before the update
        return {**stats, **mismatch_stats(logp.detach(), sampler_logp, mask), "loss": loss.detach(),
                "entropy_sum": (entropy.detach() * mask).sum()}

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
        try:
            seconds = self.run_loop("GRPO", show_progress, resume_from_checkpoint)
        finally:
            self.close_rollouts()
        model_dir = self.save_final_model(self.output_dir / "model")
        summary = {**summarize(self.history, seconds, model_dir), **self.loop_summary()}
        self.write_run_files(summary)
        return summary

    def status(self, metrics: dict[str, float]) -> str:
        return f"reward {headline_reward(metrics):.3f} kl {metrics['kl']:.4f}"

    def checkpoint_models(self) -> dict:
        """The reference moves with iterative GRPO, so it is saved then (``reference/``)."""
        return {"reference": self.ref_model} if self.args.ref_model_sync_steps else {}
