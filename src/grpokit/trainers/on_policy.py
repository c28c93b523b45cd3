"""What every trainer that learns from its own samples shares (GRPO, PPO): the prompts, the
sampler, the reward inputs, the micro-batch plan, and log-prob forwards of the policy and its
reference.

A subclass sets ``args`` (with ``prompts_per_step``, ``num_generations``, ``max_steps``,
``micro_batch_size``, ``temperature``, ``top_p``, ``top_k``, ``max_prompt_length``,
``max_completion_length``, ``reward_weights``, ``seed``, ``bf16``), calls
:meth:`OnPolicyTrainer.init_rewards` and :meth:`OnPolicyTrainer.init_sampling`, and keeps
``model``, ``tokenizer``, ``device`` and ``ref_model`` (None under LoRA, where the reference
is the base with adapters disabled, or when no KL term is used).

Under torchrun, ``prompts_per_step`` is the global number of prompts: every rank draws the same
global batch and samples its own share, with the global batch's random numbers (so the samples
do not depend on the number of ranks).

The completions come from the rollout engine (``rollout.engine``, ``grpokit.sampling.engine``):
the native sampler on the policy itself, or an engine with its own weights, which receives the
policy's before it samples a step (``rollout.max_staleness: 0``) or samples steps ahead in a
thread (``grpokit.trainers.async_rollouts``).
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

from grpokit.models.transformers_compat import activation_checkpointing_on
from grpokit.trainers.agent_rollouts import AgentRollouts
from grpokit.trainers.micro_batches import MicroBatch, plan_micro_batches, sorted_plan
from grpokit.data import PromptStream, encode_prompt, extra_columns, load_rows, validate_prompt_rows
from grpokit.errors import ConfigError
from grpokit.trainers.logprobs import completion_logprobs, model_logprobs, shared_prefix_logprobs
from grpokit.rewards import resolve_reward
from grpokit.sampling.engine import RandomDraw
from grpokit.sampling.sampler import Rollout, SamplingParams
from grpokit.trainers.async_rollouts import AsyncRollouts, SampledBatch, staleness_metrics
from grpokit.trainers.loop import TrainingLoop
from grpokit.trainers.rollout_engines import build_rollout_engine, push_weights, snapshot_weights

logger = logging.getLogger("grpokit")


class OnPolicyTrainer(TrainingLoop):
    """Sampling, reward inputs and log-prob forwards shared by GRPO and PPO."""

    agents = None  # tools, environments or a rollout function (init_agents)
    uses_rollout_engines = False  # True: rollout.engine and rollout.max_staleness apply (GRPO)
    async_rollouts: AsyncRollouts | None = None  # with rollout.max_staleness > 0, once training runs
    sampled_ahead: list[SampledBatch] = []  # batches a checkpoint held, until the producer restarts
    engine_version: int | None = None  # the step whose weights the rollout engine holds

    def init_rewards(self, reward_funcs, train_dataset, name: str) -> None:
        """Validated rows, resolved reward functions and a checked ``reward_weights``."""
        if train_dataset is None:
            raise ConfigError(f"{name} needs a train_dataset with a 'prompt' column")
        source = str(train_dataset) if isinstance(train_dataset, (str, Path)) else "train_dataset"
        self.rows = validate_prompt_rows(load_rows(train_dataset), source)
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self.reward_funcs = [resolve_reward(f, f"reward_funcs[{i}]") for i, f in enumerate(funcs)
                             if f is not None]
        weights = self.args.reward_weights
        if weights is not None and len(weights) != len(self.reward_funcs):
            raise ConfigError(f"reward_weights has {len(weights)} values but there are "
                              f"{len(self.reward_funcs)} reward functions; give one weight per function")

    def init_agents(self, tools=(), environment_factory=None, rollout_func=None) -> None:
        """Tools, an environment factory or a rollout function, from the arguments and the config
        (call before :meth:`init_rewards`, then :meth:`add_agent_reward`)."""
        self.agents = AgentRollouts(self.args, self.stage, list(tools), environment_factory, rollout_func)

    def add_agent_reward(self) -> None:
        """An environment's own reward (``get_reward``, a verifiers rubric) joins the reward
        functions with weight 1."""
        self.reward_weights = self.args.reward_weights
        if self.agents.reward_function is not None:
            self.reward_funcs.append(self.agents.reward_function)
            self.reward_weights = self.reward_weights and [*self.reward_weights, 1.0]

    def init_sampling(self) -> None:
        """Pre-tokenized prompts, the resumable prompt stream and the sampler's settings."""
        args, world = self.args, self.ranks.world_size
        if args.prompts_per_step % world:
            raise ConfigError(f"prompts_per_step ({args.prompts_per_step}) is the global number of prompts "
                             f"per step and must be a multiple of the number of processes ({world})")
        self.columns = extra_columns(self.rows)
        self.agents.start(self.tokenizer, self.rows)
        self.prompt_ids = [self.encode(r["prompt"], f"train_dataset row {i}") for i, r in enumerate(self.rows)]
        # rows carry their position so a sampled row finds its pre-tokenized prompt
        self.stream = PromptStream([{**r, "_index": i} for i, r in enumerate(self.rows)], args.seed)
        self.sampling = SamplingParams(args.max_completion_length, args.temperature, args.top_p, args.top_k)
        # single turns draw the global batch's random table on every rank; episodes (drawn as they
        # go) take one stream per rank
        rank = self.ranks.rank if self.agents.replaces_sampler else 0
        self.generator = torch.Generator(self.device).manual_seed(args.seed + rank)
        self.eos_token_id = self.tokenizer.eos_token_id  # where sampling stops
        self.rollout_engine = build_rollout_engine(self)

    def _frozen_copy(self):
        ref = copy.deepcopy(self.model).eval()
        ref.requires_grad_(False)
        return ref

    def encode(self, prompt, where: str) -> list[int]:
        """A prompt's token ids (with the tools' schemas, cut to ``max_prompt_length``)."""
        ids = encode_prompt(prompt, self.tokenizer, where, self.agents.schemas)
        limit = self.args.max_prompt_length
        return ids[-limit:] if limit else ids

    def autocast(self):
        """bfloat16 autocast when ``args.bf16``; otherwise a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16)

    def sample(self, rows: list[dict], timings: dict) -> Rollout:
        """``num_generations`` completions for each of this rank's rows, each prompt encoded
        once, with this rank's rows of the global batch's random numbers; an engine with its
        own weights first receives the policy's."""
        if self.agents.replaces_sampler:
            return self.agents.sample(self, rows, timings)
        engine = self.rollout_engine
        if engine.holds_own_weights and self.engine_version != self.step_index:
            tic = time.perf_counter()
            push_weights(engine, self.model, self.step_index)
            self.engine_version = self.step_index
            timings["weight_sync"] = time.perf_counter() - tic
        started = time.perf_counter()
        rollout = self.engine_sample(rows)
        timings["generate"] = time.perf_counter() - started
        return rollout

    def engine_sample(self, rows: list[dict]) -> Rollout:
        """The rollout engine's completions for this rank's ``rows``, with this rank's share of
        the global batch's randomness."""
        group = self.args.num_generations
        draw = RandomDraw(self.generator, self.args.prompts_per_step * group, self.ranks.row_offset(len(rows) * group))
        return self.rollout_engine.sample([self.prompt_ids[r["_index"]] for r in rows], group, self.sampling, draw)

    def draw_and_sample(self, timings: dict) -> tuple[list[dict], Rollout, dict]:
        """This rank's rows of the next ``prompts_per_step`` prompts and their rollout, and the
        rollout's metrics: sampled now, or with ``rollout.max_staleness > 0`` taken from the
        producer that sampled it ahead."""
        if self.args.rollout.max_staleness == 0:
            rows = self.ranks.shard(self.stream.next_batch(self.args.prompts_per_step))
            return rows, self.sample(rows, timings), {}
        if self.async_rollouts is None:
            self.start_async_rollouts()
        tic = time.perf_counter()
        batch = self.async_rollouts.take(self.step_index)
        timings["wait_for_rollout"], timings["generate"] = time.perf_counter() - tic, batch.seconds
        return batch.rows, batch.rollout, staleness_metrics(batch)

    def start_async_rollouts(self) -> None:
        """The producer thread, from this step on (after the batches a checkpoint held)."""
        expected = list(range(self.step_index, self.step_index + len(self.sampled_ahead)))
        if [b.step for b in self.sampled_ahead] != expected:
            logger.warning("%s: the checkpoint's batches sampled ahead are for steps %s, not %s; they are "
                           "dropped and sampled again", self.stage, [b.step for b in self.sampled_ahead], expected)
            self.sampled_ahead = []
        missing = min(self.step_index + self.args.rollout.max_staleness, self.args.max_steps) - self.step_index
        if self.step_index > 0 and len(self.sampled_ahead) < missing:
            logger.warning("%s: resuming with rollout.max_staleness %d from a checkpoint that holds %d batches "
                           "sampled ahead: steps %d-%d are sampled with the checkpoint's weights", self.stage,
                           self.args.rollout.max_staleness, len(self.sampled_ahead),
                           self.step_index + len(self.sampled_ahead), self.step_index + missing - 1)

        def sample_rows(step: int):
            rows = self.ranks.shard(self.stream.next_batch(self.args.prompts_per_step))
            return rows, self.engine_sample(rows)

        self.async_rollouts = AsyncRollouts(sample_rows, self.rollout_engine.load_weights, self.args.rollout.max_staleness,
                                            self.step_index, self.args.max_steps - 1, self.sampled_ahead)
        self.sampled_ahead = []
        self.publish_weights()

    def publish_weights(self) -> None:
        """After an update: the policy's weights for the producer (asynchronous rollouts)."""
        if self.async_rollouts is not None:
            self.async_rollouts.publish(self.step_index, snapshot_weights(self.rollout_engine, self.model))

    def stop_async_rollouts(self) -> None:
        if self.async_rollouts is not None:
            self.async_rollouts.close()
            self.async_rollouts = None

    def close_rollouts(self) -> None:
        """Stop the producer and release the rollout engine."""
        self.stop_async_rollouts()
        self.rollout_engine.close()

    def reward_inputs(self, rows: list[dict], rollout: Rollout) -> dict:
        """The keywords every reward receives besides the completions (the rollout's own
        ``reward_kwargs`` among the columns, its ``prompts`` replacing the rows')."""
        if rollout.reward_kwargs is None:
            prompts, columns = [r["prompt"] for r in rows], {c: [r.get(c) for r in rows] for c in self.columns}
        else:  # one value per completion, the rows' repeated for each of their completions
            extra = dict(rollout.reward_kwargs)
            repeated = [r for r in rows for _ in range(rollout.group_size)]
            prompts = extra.pop("prompts", None) or [r["prompt"] for r in repeated]
            columns = {**{c: [r.get(c) for r in repeated] for c in self.columns}, **extra}
        return dict(prompts=prompts, completion_ids=rollout.token_lists(), columns=columns,
                    trainer_state=SimpleNamespace(global_step=self.step_index,
                                                  max_steps=self.args.max_steps))

    def micro_batches(self, rollout: Rollout) -> list[MicroBatch]:
        """The cheaper split of the step's completions (see ``grpokit.trainers.micro_batches``)."""
        lengths, prompts = rollout.completion_lengths(), rollout.prompt_mask.sum(1)
        size = self.args.micro_batch_size
        # HF drops the KV cache under checkpointing; FSDP2 ranks must run equally many forwards
        if activation_checkpointing_on(self.model) or self.engine.sharded:
            return sorted_plan(lengths, prompts, rollout.group_size, size)[0]
        return plan_micro_batches(lengths, prompts, rollout.group_size, size)

    def _inputs(self, rollout: Rollout, batch: MicroBatch):
        """The micro-batch's prompt and completion tensors on the device, padding trimmed.

        Prompts are one per group when ``batch.shared_prefix``, else one per row.
        """
        rows, group = batch.rows, rollout.group_size
        width = int(rollout.completion_mask[rows].sum(1).max().clamp(min=1))
        prompts = rows[::group] // group if batch.shared_prefix else rows // group
        prompt_mask = rollout.prompt_mask[prompts]
        first = int((prompt_mask.sum(0) > 0).nonzero()[0])  # drop all-padding columns
        on_device = lambda t: t.to(self.device)  # noqa: E731
        return (on_device(rollout.prompt_ids[prompts, first:]), on_device(prompt_mask[:, first:]),
                on_device(rollout.completion_ids[rows, :width]),
                on_device(rollout.completion_mask[rows, :width]))

    def _logprobs(self, model, rollout: Rollout, batch: MicroBatch, with_entropy: bool,
                  training: bool = False):
        """Log-probs (and entropies) ``(n, w)`` of the batch's completions, ``w`` their longest;
        ``training``: the policy's forward with gradients, through the engine (DDP/FSDP2)."""
        if self.engine.sharded:
            forward = model_logprobs
        else:
            forward = shared_prefix_logprobs if batch.shared_prefix else completion_logprobs
        inputs = (*self._inputs(rollout, batch), self.args.temperature, with_entropy)
        with self.autocast():
            return self.engine.forward(forward, *inputs) if training else forward(model, *inputs)

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """Reference log-probs ``(N, Tc)`` in one no-grad pass per micro-batch."""
        ref = torch.zeros(rollout.completion_ids.shape)
        adapters_off = self.model.disable_adapter() if self.ref_model is None else nullcontext()
        with adapters_off:
            for micro in self.micro_batches(rollout):
                logp = self._logprobs(self.ref_model or self.model, rollout, micro, False)[0]
                ref[micro.rows, : logp.shape[1]] = logp.float().cpu()
        return ref

    def generators(self) -> dict[str, torch.Generator]:
        return {"sampling": self.generator}

    def trainer_state(self) -> dict:
        return {"stream": self.stream.state_dict(), "sampled_ahead": [b.state_dict() for b in self.sampled_ahead]}

    def load_trainer_state(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.sampled_ahead = [SampledBatch.from_state_dict(b, self.rows) for b in state.get("sampled_ahead", [])]
        if self.sampled_ahead and self.args.rollout.max_staleness == 0:
            logger.warning("%s: the checkpoint holds %d batches sampled ahead by asynchronous rollouts; with "
                           "rollout.max_staleness 0 they are dropped and their prompts skipped", self.stage,
                           len(self.sampled_ahead))
            self.sampled_ahead = []

    def save_checkpoint(self):
        """With asynchronous rollouts the producer is first held once it has sampled every batch
        the policy of this step may sample (through step + max_staleness), and the checkpoint
        keeps those batches (``grpokit.trainers.async_rollouts``)."""
        if self.async_rollouts is None:
            return super().save_checkpoint()
        self.sampled_ahead = self.async_rollouts.hold(self.step_index - 1 + self.args.rollout.max_staleness)
        try:
            return super().save_checkpoint()
        finally:
            self.sampled_ahead = []
            self.async_rollouts.release()

    def restore(self, checkpoint, keep: tuple[str, ...] = ()) -> None:
        """A resume or a rollback: the producer stops, and restarts from the checkpoint's batches."""
        self.stop_async_rollouts()
        super().restore(checkpoint, keep)
        self.engine_version = None
