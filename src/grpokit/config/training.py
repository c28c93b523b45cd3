"""Trainer settings: the optimizer and LoRA (``OptimConfig``), SFT, sampling trainers (GRPO, PPO)
and reward-model training. Algorithm names are checked against the registries of
``grpokit.algorithms`` when a config is validated."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from grpokit.errors import MissingDependencyError
from grpokit.config.monitor import SINK_PACKAGES, MonitorConfig
from grpokit.config.rollout import RolloutConfig
from grpokit.config.sections import Section


class OptimConfig(Section):
    """Optimizer and schedule settings shared by every trainer."""

    output_dir: str = "runs/train"
    """Where the resolved config, metrics.jsonl, checkpoints and summary.json are written."""
    seed: int = 0
    """Seed for model init, data order and sampling."""
    learning_rate: float = Field(1e-6, gt=0)
    """Peak AdamW learning rate."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    """Schedule after warm-up: constant, linear decay to 0, or cosine decay to 0."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up from 0."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1."""
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    """AdamW beta2."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    max_steps: int = Field(100, ge=1)
    """Number of training steps (see each trainer for what one step is)."""
    logging_steps: int = Field(10, ge=1)
    """When output is not a terminal (a log file, a pipe, CI), print a progress line (step, reward,
    KL, seconds per step, ETA) every this many steps; a terminal shows a progress bar instead.
    report_to: [console] adds a line of metrics at the same interval. metrics.jsonl gets every
    step either way."""
    save_steps: int = Field(0, ge=0)
    """Write a checkpoint-N directory every this many steps (0: only the final model)."""
    save_total_limit: int | None = Field(None, ge=0)
    """Keep only the newest this many checkpoint-N directories (None or 0: keep all)."""
    max_consecutive_nonfinite: int = Field(3, ge=1)
    """A step whose loss or gradient norm is NaN/Inf makes no update (counted as
    nonfinite/skipped_steps); after this many in a row the run saves its last good state as a
    checkpoint and stops with an error naming the step."""
    device: str = "auto"
    """'auto' picks CUDA when present, else CPU; or 'cpu', 'cuda', 'cuda:1'."""
    report_to: list[Literal["console", "tensorboard", "mlflow"]] = Field(default_factory=list)
    """Metric sinks besides metrics.jsonl (always written): 'console' (a metrics line every
    logging_steps), 'tensorboard' (output_dir/tensorboard; needs grpokit's [tensorboard] extra),
    'mlflow' (see monitor; needs the [mlflow] extra)."""

    @field_validator("report_to")
    @classmethod
    def _sinks_installed(cls, report_to: list[str]) -> list[str]:
        for sink in report_to:
            module, package = SINK_PACKAGES.get(sink, (None, None))
            if module is not None and importlib.util.find_spec(module) is None:
                raise MissingDependencyError(f"report_to {sink!r} needs {package}, which is not installed: "
                                             f"pip install {package} (grpokit's [{sink}] extra)")
        return report_to

    use_lora: bool = False
    """Train LoRA adapters (peft) instead of every weight. With beta > 0 the reference model is
    the same base with its adapters disabled, so no second copy is held. The final model is
    saved merged; checkpoints hold the adapters."""
    lora_r: int = Field(16, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] | str = "all-linear"
    """Modules that get adapters: 'all-linear' or a list of module names such as [q_proj, v_proj]."""
    bf16: bool = False
    """Run model forward passes under bfloat16 autocast (weights and optimizer stay fp32); meant
    for GPUs with bf16 support."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (the training forward then runs each
    completion with its own prompt instead of sharing the prompt across the group)."""
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    """Sink settings, completions log, periodic evaluation and alerts."""
    distributed: Literal["ddp", "fsdp2"] = "ddp"
    """SFT and GRPO under torchrun with several processes (PPO and reward models train on one):
    'ddp' keeps a whole model on every rank and all-reduces gradients; 'fsdp2' shards weights,
    gradients and optimizer state over the ranks (torch's fully_shard per decoder layer) for
    models that do not fit one device. Ignored on one process. See docs/DISTRIBUTED.md."""
    distributed_timeout: float = Field(600.0, gt=0)
    """Seconds a collective may wait for the other ranks (e.g. one that died) before this rank
    stops with an error."""


class SFTConfig(OptimConfig):
    """Supervised fine-tuning: one step is one optimizer step on a batch of demonstrations."""

    output_dir: str = "runs/sft"
    """Where the resolved config, metrics.jsonl, checkpoints and summary.json are written."""
    learning_rate: float = Field(2e-5, gt=0)
    """Peak AdamW learning rate."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule after warm-up: constant, linear decay to 0, or cosine decay to 0."""
    per_device_train_batch_size: int = Field(8, ge=1)
    """Demonstrations per optimizer step."""
    max_length: int = Field(1024, ge=2)
    """Prompt + completion tokens kept per demonstration (longer ones are cut at the right)."""
    tools: list[str] = Field(default_factory=list)
    """Tools shown in the chat prompts ('package.module:function'), the same list as the GRPO
    stage's, so a demonstration that calls them is laid out as the episodes GRPO samples."""


class SamplingConfig(OptimConfig):
    """The sampler's settings, shared by the trainers that learn from their own samples."""

    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; log-probs in the loss use the same temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = Field(0, ge=0)
    """Sample only among the k most likely tokens (0: off)."""
    max_prompt_length: int | None = Field(None, ge=1)
    """Prompts longer than this many tokens are cut at the left (None: keep whole)."""
    max_completion_length: int = Field(256, ge=1)
    """Most tokens sampled per completion."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """The rollout engine (native or vLLM, colocated or a server) and max_staleness."""

    @field_validator("advantage_estimator", "policy_loss", "loss_type", check_fields=False)
    @classmethod
    def _registered(cls, name: str, info) -> str:
        """A registered plug-in name or an import path (the registries import torch, so this
        runs only for keys a config sets)."""
        from grpokit.algorithms import REGISTRIES

        return REGISTRIES[info.field_name].check(name)


class GRPOConfig(SamplingConfig):
    """GRPO: one step samples ``prompts_per_step × num_generations`` completions, scores them and
    takes ``num_iterations`` optimizer steps (μ) on that batch."""

    output_dir: str = "runs/grpo"
    """Where the resolved config, metrics.jsonl, checkpoints and summary.json are written."""
    prompts_per_step: int = Field(8, ge=1)
    """Unique prompts sampled per step."""
    num_generations: int = Field(8, ge=2)
    """Completions per prompt (G): the group over which advantages are normalised."""
    num_iterations: int = Field(1, ge=1)
    """Optimizer steps (μ) on each sampled batch; old log-probs come from the sampling policy."""
    micro_batch_size: int = Field(16, ge=1)
    """Completions per forward/backward pass; bounds memory only, never changes the math."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient (k3 estimator against the frozen reference). 0: no reference model kept."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """Lower clip range: ratios below 1 - epsilon are clipped."""
    epsilon_high: float | None = Field(None, gt=0)
    """Upper clip range (DAPO clip-higher); None uses epsilon."""
    advantage_estimator: str = "grpo"
    """How rewards become per-token advantages: grpo ((r - group mean) / scale_rewards), rloo
    (leave-one-out baseline), reinforce_pp / reinforce_pp_baseline (REINFORCE++: normalised over
    the batch, without or with the group mean subtracted first), process (with process_reward;
    the default when process_reward is set), or 'package.module:function' for your own
    (grpokit.algorithms.estimators)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """grpo's divisor: the group's reward std, the batch's, or none (Dr. GRPO)."""
    policy_loss: str = "clip"
    """The per-token loss: clip (PPO/GRPO clipped surrogate with a per-token ratio; DAPO's
    clip-higher with epsilon_high > epsilon), gspo (one length-normalised ratio per sequence),
    gspo_token, cispo (clipped, detached importance weight times log-prob), or
    'package.module:function' (grpokit.algorithms.policy_losses). TRL's loss_type: cispo is
    policy_loss: cispo with loss_type: dapo."""
    loss_type: str = "grpo"
    """How per-token losses become the batch loss (TRL's key): grpo (token mean per sequence,
    then mean), bnpo (token mean over each process's batch, averaged over processes), dapo
    (token mean over the global batch), dr_grpo (token sum / (max_completion_length * B)), or
    'package.module:function' (grpokit.algorithms.aggregations)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """TRL's key for the ratio's level: 'sequence' selects policy_loss gspo (GSPO)."""
    tis_cap: float | None = Field(None, gt=0)
    """Truncated importance sampling for a sampler whose log-probs differ from the policy's (an
    inference engine, another precision, an older policy with rollout.max_staleness): each
    token's surrogate (not the KL term) is weighted by min(p_policy / p_sampler, tis_cap), see
    tis_mode. None: 2.0 when
    rollout.engine is vllm or rollout.max_staleness > 0, else off. TRL:
    vllm_importance_sampling_cap."""
    tis_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "off"] = "token_truncate"
    """How the sampler's importance ratio applies (TRL's vllm_importance_sampling_mode): per token or
    one ratio per sequence (the product of its tokens' ratios); 'truncate' caps the ratio at
    tis_cap, 'mask' drops tokens (or sequences) whose ratio exceeds it. 'off': no correction."""
    dynamic_sampling: Literal["off", "drop", "refill"] = "off"
    """DAPO's dynamic sampling: 'refill' drops groups whose rewards are all equal and samples
    more prompts until prompts_per_step groups with signal are found (at most
    max_sampling_rounds rounds of prompts_per_step prompts); 'drop' only drops the groups whose
    advantages are all zero (a smaller batch, no extra sampling)."""
    max_sampling_rounds: int = Field(3, ge=1)
    """With dynamic_sampling 'refill': the most rounds of prompts_per_step prompts sampled per
    step (a batch still short after them trains on the groups it has)."""
    tools: list[str] = Field(default_factory=list)
    """Tools the policy may call ('package.module:function'; TRL's tools=): each completion becomes
    a multi-turn episode in which tool calls (<tool_call>{"name": ..., "arguments": {...}}
    </tool_call>) are run and their results appended as tool messages; only the sampled tokens
    are trained on. Needs chat prompts and a chat template that ends a turn with EOS."""
    max_tool_calling_iterations: int | None = Field(None, ge=0)
    """With tools: the most rounds of tool calls per episode (TRL's name); None: until the model
    stops calling tools or max_completion_length (sampled + tool tokens) is reached."""
    tool_timeout_s: float = Field(10.0, gt=0)
    """With tools: seconds a round of tool calls may take before the unanswered ones are told
    they timed out."""
    tool_isolation: Literal["thread", "process"] = "thread"
    """With tools: 'thread' runs each call in a thread of the trainer's process; 'process' in a
    forked child process, so a tool that crashes or kills its process ends only the child (its
    changes to memory do not come back, so not with an environment)."""
    environment: str | None = None
    """An environment factory ('package.module:Class'; TRL's environment_factory=): one instance
    per episode; reset(**row) starts it (the string it returns is appended to the prompt), its
    public methods are the tools, an optional get_reward() is one more reward (weight 1). With an
    environment the dataset is optional (the prompt is what reset returns)."""
    rollout_func: str | None = None
    """Your own generation loop ('package.module:function'; TRL's rollout_func=):
    fn(prompts, trainer) -> {prompt_ids, completion_ids, logprobs[, env_mask, ...]}, one list
    per completion; extra keys reach the reward functions."""
    reward_weights: list[float] | None = None
    """Weight of each reward function in the total reward; None weighs each 1."""
    reward_errors: Literal["raise", "skip"] = "raise"
    """A reward function that raises: 'raise' stops with the error, naming the function, the
    sample and its prompt; 'skip' gives the samples it raises on None for that function
    (counted as reward/<name>/errors) and trains on. To find the samples, a failing call is
    repeated one sample at a time, so a failure costs one call per sample."""
    use_bias_correction_kl: bool = True
    """Multiply the per-token KL term by the importance ratio (gradient included), as TRL does by
    default (its name; DeepSeek-V3.2): the KL gradient is then the unbiased reverse-KL gradient,
    log p - log p_ref per token, even on-policy where the ratio's value is 1 and the KL value
    does not change. False gives DeepSeekMath's k3 gradient, 1 - p_ref/p. Only matters with
    beta > 0."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_completion_length out of the loss."""
    @model_validator(mode="before")
    @classmethod
    def _trl_spellings(cls, data: Any) -> Any:
        """TRL's ways of naming a loss: ``loss_type: cispo`` (a policy loss aggregated like dapo)
        and ``importance_sampling_level: sequence`` (GSPO); and process_reward's estimator."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        loss_type = data.get("loss_type")
        if isinstance(loss_type, str) and "policy_loss" not in data:
            from grpokit.algorithms import AGGREGATIONS, POLICY_LOSSES

            if loss_type in POLICY_LOSSES and loss_type not in AGGREGATIONS:
                data["policy_loss"], data["loss_type"] = loss_type, "dapo"
        if data.get("importance_sampling_level") == "sequence":
            chosen = data.setdefault("policy_loss", "gspo")
            if chosen not in ("gspo", "gspo_token"):
                raise ValueError(f"importance_sampling_level 'sequence' is GSPO's ratio, but policy_loss is "
                                 f"{chosen!r}; set policy_loss: gspo (or gspo_token) and drop importance_sampling_level")
        if data.get("process_reward") and "advantage_estimator" not in data:
            data["advantage_estimator"] = "process"
        return data

    process_reward: str | None = None
    """Process supervision (DeepSeekMath §4.1.3): a registered process reward ('digit_sum_steps'),
    'package.module:function', or a sequence-classification model directory, scoring each step.
    Token advantages then sum the group-normalised scores of the current and later steps; they
    replace outcome advantages, or are added to them when reward functions are also given."""
    step_separator: str = Field("\n", min_length=1)
    """Text between reasoning steps for process_reward (the digit_sum scratchpad uses ',')."""
    process_steps: Literal["separator", "turns"] = "separator"
    """What a step is for process_reward: the text between step_separators, or, with tools or an
    environment, each model turn of an episode (per-turn rewards: a turn is credited with its own
    score and every later turn's)."""
    ref_model_sync_steps: int = Field(0, ge=0)
    """Iterative GRPO (DeepSeekMath Algorithm 1): move the reference model to the policy every this
    many steps (needs beta > 0 and no LoRA); 0: never. TRL: sync_ref_model + ref_model_sync_steps."""
    ref_model_mixup_alpha: float = Field(1.0, gt=0, le=1)
    """At each sync, reference = alpha * policy + (1 - alpha) * reference; 1.0 is DeepSeekMath's
    reset (TRL's default is 0.6)."""


class RewardModelConfig(OptimConfig):
    """Reward-model training: one step is one optimizer step on a batch of preference pairs."""

    output_dir: str = "runs/rm"
    """Where the resolved config, metrics.jsonl, the model and summary.json are written."""
    learning_rate: float = Field(2e-5, gt=0)
    """Peak AdamW learning rate (DeepSeekMath's reward model: 2e-5)."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule after warm-up: constant, linear decay to 0, or cosine decay to 0."""
    per_device_train_batch_size: int = Field(8, ge=1)
    """Preference pairs per optimizer step (each pair is two sequences)."""
    max_length: int = Field(1024, ge=2)
    """Tokens kept per prompt + response; longer ones lose their first tokens (the score is
    read at the last one)."""
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of the pairs held out to measure pair accuracy before and after training (ignored
    when an eval dataset is given; 0: no held-out pairs)."""


class PPOConfig(SamplingConfig):
    """PPO with a value model: one step samples ``prompts_per_step × num_generations``
    completions, scores them, and takes ``num_ppo_epochs`` optimizer steps on that batch.
    Names follow TRL's ``PPOConfig``."""

    output_dir: str = "runs/ppo"
    """Where the resolved config, metrics.jsonl, checkpoints and summary.json are written."""
    prompts_per_step: int = Field(64, ge=1)
    """Unique prompts sampled per step."""
    num_generations: int = Field(1, ge=1)
    """Completions per prompt; PPO needs 1, more only matches another run's sample budget."""
    num_ppo_epochs: int = Field(4, ge=1)
    """Optimizer steps on each sampled batch (old log-probs and values come from sampling)."""
    micro_batch_size: int = Field(16, ge=1)
    """Completions per forward/backward pass; bounds memory only, never changes the math."""
    advantage_estimator: str = "gae"
    """How rewards become per-token advantages (see grpo.advantage_estimator): gae, over the
    value model's values and KL-shaped rewards."""
    policy_loss: str = "clip"
    """The per-token policy loss, clipped at cliprange (see grpo.policy_loss)."""
    loss_type: str = "bnpo"
    """How per-token policy losses become the batch loss (see grpo.loss_type): bnpo, a token
    mean over the batch, as TRL's PPO."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount over completion tokens (InstructGPT: 1, no discount)."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE λ: 0 is the one-step TD error, 1 the Monte-Carlo return minus the value."""
    cliprange: float = Field(0.2, gt=0, lt=1)
    """Policy ratios outside [1 - cliprange, 1 + cliprange] are clipped."""
    cliprange_value: float = Field(0.2, gt=0)
    """New values further than this from the sampling-time values are clipped in the value loss."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss in the joint loss."""
    kl_coef: float = Field(0.05, ge=0)
    """Per-token KL penalty in the reward (k1 against the frozen reference). 0: no reference model kept."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the batch's completion tokens."""
    value_model_path: str | None = None
    """A model directory to load the value model from (a token- or sequence-classification
    checkpoint, or a causal LM whose backbone gets a fresh scalar head). None: the policy's own
    checkpoint with a fresh scalar head."""
    reward_weights: list[float] | None = None
    """Weight of each reward function in the score; None weighs each 1."""
