"""The PPO trainer (RLHF style): policy, frozen reference and a value model, GAE advantages.

The baseline GRPO is measured against. One step (what ``max_steps``
counts):

1. take ``prompts_per_step`` (P) prompts and sample ``num_generations`` (G, usually 1)
   completions each, with the same sampler as GRPO;
2. score them with the same reward functions (``score_completions``), so rule rewards and TRL
   reward functions work unchanged; the weighted total is the sequence score;
3. in no-grad passes, take the reference's log-probs (when ``kl_coef > 0``) and the value
   model's V(s_t) at every completion position;
4. the ``advantage_estimator`` (``gae``: per-token rewards ``-kl_coef · (log π_old - log π_ref)``
   with the score added at the last token, then GAE; ``grpokit.algorithms.estimators.gae``);
   value targets are advantages + values; whiten the advantages over the batch;
5. take ``num_ppo_epochs`` optimizer steps on the whole batch, each accumulating gradients over
   micro-batches: loss = the ``policy_loss`` (``clip``) aggregated by ``loss_type`` (``bnpo``,
   a token mean over the batch) + ``vf_coef`` × the clipped value loss's token mean. One AdamW covers the policy and the value model, with one gradient
   norm clip over both, as TRL's ``PolicyAndValueWrapper`` does.

The value model is ``AutoModelForTokenClassification(num_labels=1)``: a per-token scalar head
on its own copy of the backbone, loaded from the policy's checkpoint (fresh head) or from
``value_model_path``. It is a standard transformers class, so ``from_pretrained`` /
``save_pretrained`` load and save it with no code of ours, and it is the separate model of
comparable size that PPO carries (a head on the policy's own trunk would be a different
algorithm, with shared features and no second model to pay for).

Checkpoints (the value model in ``checkpoint-N/value_model``), exact resume, skipped non-finite
updates, ``request_stop`` and ``rollback`` come from ``grpokit.trainers.loop.TrainingLoop``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel, set_seed

from grpokit.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    POLICY_LOSSES,
    AdvantageInputs,
    BatchTotals,
    LossSettings,
    PolicyLossInputs,
)
from grpokit.algorithms.masked import masked_mean, masked_whiten
from grpokit.algorithms.value import explained_variance, value_loss
from grpokit.trainers.micro_batches import MicroBatch
from grpokit.config import PPOConfig, write_resolved
from grpokit.models import load_pretrained, save_model
from grpokit.rewards import RewardBatch, reward_metrics, score_completions
from grpokit.sampling.sampler import Rollout
from grpokit.models.for_training import final_model, is_peft, resolve_model
from grpokit.models.transformers_compat import enable_activation_checkpointing
from grpokit.monitoring.summary import write_summary
from grpokit.trainers.grpo_metrics import summarize
from grpokit.trainers.optim import build_optimizer, clip_and_step
from grpokit.trainers.on_policy import OnPolicyTrainer


@dataclass
class PPOBatch:
    """One sampled and scored batch with everything the PPO epochs need (N = P·G rows)."""

    rollout: Rollout
    rewards: RewardBatch
    mask: torch.Tensor  # (N, Tc) float completion mask
    weights: torch.Tensor  # (N, Tc) the policy loss's per-token weights (its aggregation)
    old_logp: torch.Tensor  # (N, Tc) sampling-time log-probs
    ref_logp: torch.Tensor | None  # (N, Tc), None when kl_coef == 0
    old_values: torch.Tensor  # (N, Tc) sampling-time V(s_t)
    advantages: torch.Tensor  # (N, Tc), whitened when whiten_advantages
    returns: torch.Tensor  # (N, Tc) value targets


def load_value_model(source: str | Path | PreTrainedModel) -> PreTrainedModel:
    """A per-token scalar value model with the backbone of ``source`` and no dropout.

    ``source`` is a model directory (any transformers checkpoint of a supported architecture;
    a missing scalar head is freshly initialised) or a causal LM object, whose backbone weights
    are copied into a new token-classification model of the same config.
    """
    is_path = isinstance(source, (str, Path))
    config = load_pretrained(AutoConfig, source, "value model's config") if is_path else copy.deepcopy(source.config)
    config.num_labels, config.classifier_dropout = 1, 0.0
    if is_path:
        return load_pretrained(AutoModelForTokenClassification, source, "value model", config=config,
                               dtype=torch.float32)
    value_model = AutoModelForTokenClassification.from_config(config)
    value_model.base_model.load_state_dict(source.base_model.state_dict())
    return value_model


def completion_values(value_model: PreTrainedModel, prompt_ids: torch.Tensor,
                      prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor) -> torch.Tensor:
    """V(s_t) ``(B, Tc)``: the value head at the position that predicts completion token t.

    Rows are ``[left-padded prompt | right-padded completion]``, aligned as in
    ``grpokit.trainers.logprobs.completion_logprobs``.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], 1)  # (B, Tp + Tc)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)  # (B, Tp + Tc)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, Tp + Tc)
    values = value_model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False).logits[..., 0]  # (B, Tp + Tc)
    width = completion_ids.shape[1]
    return values[:, -width - 1 : -1].float()  # (B, Tc)


class PPOTrainer(OnPolicyTrainer):
    """Train a causal LM with PPO and a value model; the constructor is ``GRPOTrainer``'s.

    ``model`` is a local model directory or a ``PreTrainedModel`` (then pass its tokenizer as
    ``processing_class``); ``reward_funcs`` and ``train_dataset`` follow the TRL reward contract
    exactly as in ``GRPOTrainer``. The trainer holds the policy, the value model, and the
    frozen reference when ``kl_coef > 0`` (under LoRA the reference is the base with adapters
    disabled); rule rewards need no reward model. ``callbacks`` get
    ``on_step_end(trainer, step, batch, metrics)`` as in ``GRPOTrainer``.
    """

    stage = "ppo"
    distributable = False  # a baseline for comparison: one process

    def __init__(self, model, reward_funcs, args: PPOConfig | None = None, train_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None):
        self.args = args = args or PPOConfig()
        self.init_agents()  # PPO samples single turns: no tools in its config
        self.init_rewards(reward_funcs, train_dataset, "PPOTrainer")
        self.add_agent_reward()
        self.estimator = ADVANTAGE_ESTIMATORS.get(args.advantage_estimator)
        self.policy_loss = POLICY_LOSSES.get(args.policy_loss)
        self.aggregation = AGGREGATIONS.get(args.loss_type)
        self.loss_settings = LossSettings(args.cliprange, args.cliprange)
        # the value model copies the policy's backbone before LoRA (if any) wraps the policy; its
        # scalar head is drawn from the seeded torch RNG
        set_seed(args.seed)
        value_model = load_value_model(args.value_model_path or model)
        self.model, self.tokenizer, self.device = resolve_model(model, processing_class, args,
                                                                peft_config)
        self.value_model = value_model.to(self.device)
        if args.gradient_checkpointing:
            enable_activation_checkpointing(self.value_model)
        self.ref_model = (self._frozen_copy() if args.kl_coef > 0 and not is_peft(self.model)
                          else None)
        self.init_loop(callbacks)
        self.init_sampling()

    @property
    def trained_models(self) -> torch.nn.ModuleList:
        """The policy and the value model: what the optimizer and the gradient clip cover."""
        return torch.nn.ModuleList([self.model, self.value_model])

    def build_optimizer(self) -> None:
        """One AdamW (and its schedule) over the policy's and the value model's parameters."""
        total_updates = self.args.max_steps * self.args.num_ppo_epochs
        self.optimizer, self.scheduler = build_optimizer(self.trained_models, self.args,
                                                         total_updates)

    # ----------------------------------------------------------------- one step, top to bottom
    def step(self) -> dict[str, float]:
        """Sample, score and learn from one batch of ``prompts_per_step`` prompts."""
        args, timings, started = self.args, {}, time.perf_counter()

        batch = self.sample_batch(timings)  # 1-4: sample, score, values, advantages

        # 5. update: num_ppo_epochs optimizer steps on the whole batch ---------------------------
        tic = time.perf_counter()
        passes = [self.ppo_pass(batch) for _ in range(args.num_ppo_epochs)]
        timings["train"] = time.perf_counter() - tic
        timings["step"] = time.perf_counter() - started

        # 6. metrics ----------------------------------------------------------------------------
        self.step_index += 1
        metrics = ppo_step_metrics(batch, passes, timings, self.scheduler.get_last_lr()[0], args.kl_coef)
        problem = next((p["problem"] for p in passes if p["problem"]), None)
        return self.end_step(batch, metrics, problem)

    def sample_batch(self, timings: dict) -> PPOBatch:
        """Steps 1-4 of :meth:`step`: the sampled, scored batch with its reference log-probs,
        values, advantages, returns and loss weights."""
        args = self.args
        # 1-2. sample and score ---------------------------------------------------------------
        rows = self.ranks.shard(self.stream.next_batch(args.prompts_per_step))
        rollout = self.sample(rows, timings)
        tic = time.perf_counter()
        rewards = self.score(rows, rollout)
        timings["score"] = time.perf_counter() - tic

        # 3. reference log-probs and the value model's V(s_t) -----------------------------------
        tic = time.perf_counter()
        old_logp = rollout.sampling_logp
        ref_logp = self.reference_logprobs(rollout) if args.kl_coef > 0 else None
        timings["reference"] = time.perf_counter() - tic
        tic = time.perf_counter()
        old_values = self.rollout_values(rollout)
        timings["value"] = time.perf_counter() - tic

        # 4. advantages and value targets --------------------------------------------------------
        mask = rollout.completion_mask.float()
        inputs = AdvantageInputs(rewards.total, torch.arange(rollout.num_completions) // rollout.group_size,
                                 mask, values=old_values, sampling_logp=old_logp, ref_logp=ref_logp)
        advantages = self.estimator(inputs, args)  # (N, Tc)
        returns = (advantages + old_values) * mask  # (N, Tc)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        weights = self.aggregation(mask, BatchTotals.of(mask, args.max_completion_length))
        return PPOBatch(rollout, rewards, mask, weights, old_logp, ref_logp, old_values, advantages, returns)

    def score(self, rows: list[dict], rollout: Rollout) -> RewardBatch:
        texts = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        return score_completions(self.reward_funcs, completions=texts, weights=self.reward_weights,
                                 **self.reward_inputs(rows, rollout))

    def _values(self, rollout: Rollout, batch: MicroBatch) -> torch.Tensor:
        """V(s_t) ``(n, w)`` of the batch's completions (each row runs with its own prompt)."""
        prompt_ids, prompt_mask, completion_ids, completion_mask = self._inputs(rollout, batch)
        if batch.shared_prefix:
            repeat = lambda t: t.repeat_interleave(rollout.group_size, 0)  # noqa: E731
            prompt_ids, prompt_mask = repeat(prompt_ids), repeat(prompt_mask)
        with self.autocast():
            return completion_values(self.value_model, prompt_ids, prompt_mask, completion_ids,
                                     completion_mask)

    @torch.no_grad()
    def rollout_values(self, rollout: Rollout) -> torch.Tensor:
        """Sampling-time values ``(N, Tc)`` (0 on padding) in one no-grad pass per micro-batch."""
        values = torch.zeros(rollout.completion_ids.shape)
        for micro in self.micro_batches(rollout):
            v = self._values(rollout, micro)
            values[micro.rows, : v.shape[1]] = v.cpu()
        return values * rollout.completion_mask

    def ppo_pass(self, batch: PPOBatch) -> dict:
        """One optimizer step on the whole batch; returns that pass's loss statistics and, under
        ``problem``, what was NaN/Inf when the update was skipped (else None).

        Each micro-batch's token means are weighted by its share of the batch's tokens, so the
        accumulated loss and gradients are those of the whole batch at once.
        """
        args, totals = self.args, {}
        batch_tokens = batch.mask.sum().clamp(min=1)
        for micro in self.micro_batches(batch.rollout):
            logp, entropy = self._logprobs(self.model, batch.rollout, micro, with_entropy=True)
            values = self._values(batch.rollout, micro)
            rows, width = micro.rows, logp.shape[1]
            take = lambda t: t[rows, :width].to(self.device)  # noqa: E731
            mask = take(batch.mask)
            share = mask.sum() / batch_tokens
            per_token, pg_stats = self.policy_loss(
                PolicyLossInputs(logp, take(batch.old_logp), take(batch.advantages), mask), self.loss_settings)
            pg_loss = (per_token * take(batch.weights)).sum()  # this micro-batch's share of the batch loss
            vf_loss, vf_clipped = value_loss(values, take(batch.old_values), take(batch.returns),
                                             mask, args.cliprange_value)
            loss = pg_loss + args.vf_coef * vf_loss * share
            loss.backward()
            log_ratio = (logp.detach() - take(batch.old_logp)) * mask
            stats = {"loss": loss.detach(), "policy_loss": pg_loss.detach(),
                     "value_loss": vf_loss.detach() * share,
                     "clip_frac/policy": pg_stats["clip_region_sum"] / batch_tokens,
                     "clip_frac/value": vf_clipped * share,
                     "approx_kl": 0.5 * masked_mean(log_ratio**2, mask) * share,
                     "entropy": masked_mean(entropy.detach(), mask) * share}
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        totals["grad_norm"], totals["problem"] = clip_and_step(
            self.trained_models, self.optimizer, self.scheduler, args.max_grad_norm, totals["loss"])
        return totals

    # ----------------------------------------------------------------- the loop
    def train(self, show_progress: bool = True, resume_from_checkpoint: bool | str | None = None) -> dict:
        """Train for ``max_steps``; ``resume_from_checkpoint`` (True: the latest checkpoint in
        ``output_dir``, or a checkpoint path) continues an interrupted run exactly."""
        args, out = self.args, Path(self.args.output_dir)
        write_resolved(args, out)
        set_seed(args.seed)  # python, numpy and torch: reward functions may draw too
        self.build_optimizer()
        self.model.train()
        self.value_model.train()
        seconds = self.run_loop("PPO", show_progress, resume_from_checkpoint)
        self.model = final_model(self.model)
        self.save(out / "model", out / "value_model")
        summary = {**summarize(self.history, seconds, out / "model"), **self.loop_summary(),
                   "stage": "ppo", "value_model_dir": str(out / "value_model")}
        write_summary(out, summary)
        return summary

    def status(self, metrics: dict[str, float]) -> str:
        return (f"reward {metrics['reward/mean']:.3f} kl {metrics['kl']:.4f} "
                f"vf {metrics['loss/value']:.4f}")

    def checkpoint_models(self) -> dict:
        return {"value_model": self.value_model}

    def save(self, policy_dir: Path, value_dir: Path) -> None:
        """Save the policy, then the value model (``value_dir`` may lie inside ``policy_dir``)."""
        save_model(self.model, self.tokenizer, policy_dir)
        save_model(self.value_model, self.tokenizer, value_dir)


def ppo_step_metrics(batch: PPOBatch, passes: list[dict], timings: dict, lr: float,
                     kl_coef: float) -> dict[str, float]:
    """The per-step metrics written to metrics.jsonl (TRL's PPO statistics, grpokit's names).

    ``kl`` is the per-token mean of ``log π_old - log π_ref`` (the k1 estimate in the reward);
    ``objective/non_score_reward`` its per-sequence sum times ``-kl_coef``; the loss and clip
    statistics are means over the ``num_ppo_epochs`` passes.
    """
    rollout, mask = batch.rollout, batch.mask
    lengths = rollout.completion_lengths().float()  # (N,)
    per_pass = lambda key: sum(p[key] for p in passes) / len(passes)  # noqa: E731
    kl = (batch.old_logp - batch.ref_logp) * mask if batch.ref_logp is not None else mask * 0
    non_score = -kl_coef * kl.sum(1)  # (N,)
    return {
        **reward_metrics(batch.rewards),
        "objective/non_score_reward": non_score.mean().item(),
        "objective/rlhf_reward": (batch.rewards.total + non_score).mean().item(),
        "kl": masked_mean(kl, mask).item(),
        "loss": per_pass("loss"), "loss/policy": per_pass("policy_loss"),
        "loss/value": per_pass("value_loss"),
        "clip_ratio/policy": per_pass("clip_frac/policy"),
        "clip_ratio/value": per_pass("clip_frac/value"),
        "policy/approx_kl": per_pass("approx_kl"), "entropy": per_pass("entropy"),
        "value/mean": masked_mean(batch.old_values, mask).item(),
        "value/returns_mean": masked_mean(batch.returns, mask).item(),
        "value/explained_variance": explained_variance(batch.old_values, batch.returns, mask),
        "advantage/mean": masked_mean(batch.advantages, mask).item(),
        "advantage/min": batch.advantages[mask > 0].min().item(),
        "advantage/max": batch.advantages[mask > 0].max().item(),
        "completion/mean_length": lengths.mean().item(),
        "completion/min_length": lengths.min().item(),
        "completion/max_length": lengths.max().item(),
        "completion/truncated_frac": rollout.truncated.float().mean().item(),
        "learning_rate": lr, "grad_norm": per_pass("grad_norm"),
        **{f"time/{k}": v for k, v in timings.items()},
        "completion_tokens_per_s": lengths.sum().item() / timings["step"],
    }
