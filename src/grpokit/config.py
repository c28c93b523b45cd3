"""The config tree: validated pydantic models, YAML loading and dotted overrides.

Every field's docstring is its only help text (the README's config reference is generated from
these by ``python -m grpokit.config``). Unknown keys are rejected with the nearest valid name.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from contextvars import ContextVar
import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from grpokit.data import DEFAULT_SYSTEM_PROMPT
from grpokit.errors import ConfigError, MissingDependencyError

__all__ = ["ConfigError", "RunConfig", "GRPOConfig", "SFTConfig", "PPOConfig", "RewardModelConfig",
           "EvalConfig", "SampleConfig", "DataConfig", "load_config", "validate", "write_resolved"]


_validating = ContextVar("grpokit_config_validating", default=False)  # inside an outer validation


@contextmanager
def _outer_validation():
    token = _validating.set(True)
    try:
        yield
    finally:
        _validating.reset(token)


class Section(BaseModel):
    """Base for every config section: unknown keys are errors (all of them reported, each with
    the nearest valid name), and an empty YAML section means "all defaults"."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    def __init__(self, /, **data: Any):
        """``GRPOConfig(num_generation=4)`` raises a ConfigError listing every problem, each with
        the nearest valid key (a section built inside another one lets the outer one report)."""
        if _validating.get():
            super().__init__(**data)
            return
        with _outer_validation():
            try:
                super().__init__(**data)
            except ValidationError as error:
                raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems(error, type(self)))) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any):
        """pydantic's, reporting every problem as a ``ValidationError`` (no custom wrapping)."""
        with _outer_validation():
            return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any):
        with _outer_validation():
            return super().model_validate_json(json_data, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):  # ``grpo:`` with nothing under it is None in YAML
            data = {k: ({} if v is None and _is_section(cls, k) else v) for k, v in data.items()}
        return data


def _is_section(model: type[BaseModel], key: str) -> bool:
    return _section_of(model, key) is not None


def _section_of(model: type[BaseModel], key) -> type[Section] | None:
    """The Section class of ``model``'s field ``key`` (also for a list of sections), or None."""
    field = model.model_fields.get(key) if isinstance(key, str) else None
    if field is None:
        return None
    annotation = field.annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


# report_to sink -> (the module it imports, the package that provides it = grpokit's extra of that name)
SINK_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}

AlertAction = Literal["off", "warn", "stop", "rollback"]


class RewardShiftAlertConfig(Section):
    """Reward distribution shift: the two-sample Kolmogorov–Smirnov statistic (the largest gap
    between the two empirical CDFs) between the per-sample total rewards of the last `window`
    steps, pooled, and those of the current step."""

    action: AlertAction = "warn"
    """What a firing does: off, warn (log it), stop (end training), rollback (reload the last
    checkpoint with a lower learning rate)."""
    window: int = Field(20, ge=1)
    """Steps whose rewards form the reference distribution (the rule is quiet until it is full)."""
    max_ks: float = Field(0.5, gt=0, le=1)
    """Fire when the KS statistic exceeds this. Sampling noise alone reaches about
    1.95·sqrt(1/n + 1/(window·n)) once in a thousand steps for n samples per step (0.49 at n=16)."""


class KLAlertConfig(Section):
    """KL to the reference model above a bound (needs beta > 0; the metric is 0 otherwise)."""

    action: AlertAction = "warn"
    """What a firing does: off, warn, stop or rollback."""
    max_kl: float = Field(0.5, gt=0)
    """Fire when the step's mean per-token KL (k3 estimator, nats) exceeds this."""


class EntropyAlertConfig(Section):
    """Entropy collapse: the sampled tokens' mean entropy under a floor, or fallen by a factor
    against the median of the last `window` steps."""

    action: AlertAction = "warn"
    """What a firing does: off, warn, stop or rollback."""
    min_entropy: float = Field(0.01, ge=0)
    """Fire when the mean token entropy (nats) is below this (the demo's healthy GRPO stage
    ends near 0.03)."""
    max_drop_factor: float = Field(4.0, gt=1)
    """Fire when the entropy is below the window median divided by this."""
    window: int = Field(20, ge=1)
    """Steps in the rolling median (the drop check is quiet until it is full)."""


class LengthAlertConfig(Section):
    """Completion length exploding or collapsing: the step's mean completion length over the
    median of the last `window` steps' means."""

    action: AlertAction = "warn"
    """What a firing does: off, warn, stop or rollback."""
    window: int = Field(20, ge=1)
    """Steps in the rolling median (quiet until it is full)."""
    max_ratio: float = Field(3.0, gt=1)
    """Fire when the mean length exceeds this multiple of the rolling median (exploding)."""
    min_ratio: float = Field(0.3, gt=0, lt=1)
    """Fire when the mean length is below this fraction of the rolling median (collapsing)."""


class TruncationAlertConfig(Section):
    """Too many completions cut at max_completion_length."""

    action: AlertAction = "warn"
    """What a firing does: off, warn, stop or rollback."""
    max_rate: float = Field(0.5, ge=0, lt=1)
    """Fire when the fraction of truncated completions exceeds this."""


class NoSignalAlertConfig(Section):
    """No learning signal: most groups have equal rewards (zero advantage) for several steps."""

    action: AlertAction = "warn"
    """What a firing does: off, warn, stop or rollback."""
    min_frac_zero_std: float = Field(0.9, gt=0, le=1)
    """A step counts when reward/frac_zero_std (the share of groups with equal rewards) is at
    least this."""
    steps: int = Field(10, ge=1)
    """Fire after this many counting steps in a row."""


class NonFiniteAlertConfig(Section):
    """NaN or Inf in any metric."""

    action: AlertAction = "warn"
    """What a firing does: off, warn, stop or rollback."""
    ignore: list[str] = Field(default_factory=list)
    """Metric names (shell patterns such as 'reward/*/std') allowed to be NaN, e.g. the std of a
    reward that returns None for all but one sample."""


class RewardHackingAlertConfig(Section):
    """Reward hacking: the training reward rising while held-out pass@1 (from the periodic eval)
    falls, or one reward function rising while the verifier's reward does not."""

    action: AlertAction = "warn"
    """What a firing does: off, warn, stop or rollback."""
    evals: int = Field(3, ge=2)
    """Periodic evaluations compared: fire when, from the first to the last of them, the mean
    training reward (over the steps since the previous evaluation) rose by min_rise and
    eval/pass@1 fell by min_drop."""
    min_rise: float = Field(0.05, gt=0)
    """Rise, in reward units, that counts as rising (training reward; a reward function's mean)."""
    min_drop: float = Field(0.05, gt=0, le=1)
    """Fall of eval/pass@1 that counts as falling."""
    verifier_reward: str = "correctness"
    """The reward function that measures the real objective: another function's mean rising by
    min_rise from the older to the newer half of the window while this one's mean does not rise
    at all fires the rule (skipped when no reward has this name)."""
    window: int = Field(20, ge=2)
    """Steps compared, older half against newer half, for the per-function check."""


class AlertsConfig(Section):
    """Alert rules checked after every step; each fires at most once per cooldown."""

    cooldown_steps: int = Field(10, ge=0)
    """After a rule fires it stays silent for this many steps (its state still updates)."""
    reward_shift: RewardShiftAlertConfig = Field(default_factory=RewardShiftAlertConfig)
    """Sudden change in the per-sample reward distribution."""
    kl: KLAlertConfig = Field(default_factory=KLAlertConfig)
    """KL to the reference above a bound."""
    entropy: EntropyAlertConfig = Field(default_factory=EntropyAlertConfig)
    """Entropy collapse."""
    length: LengthAlertConfig = Field(default_factory=LengthAlertConfig)
    """Completion length exploding or collapsing."""
    truncation: TruncationAlertConfig = Field(default_factory=TruncationAlertConfig)
    """Truncation rate above a bound."""
    no_signal: NoSignalAlertConfig = Field(default_factory=NoSignalAlertConfig)
    """Groups with equal rewards for several steps."""
    non_finite: NonFiniteAlertConfig = Field(default_factory=NonFiniteAlertConfig)
    """NaN or Inf in a metric."""
    reward_hacking: RewardHackingAlertConfig = Field(default_factory=RewardHackingAlertConfig)
    """Training reward up while held-out accuracy or the verifier's reward is not."""


class MonitorConfig(Section):
    """Training monitors: sink settings, the completions log, periodic held-out evaluation and
    alerts (sinks themselves are chosen by report_to)."""

    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI for report_to: [mlflow]; None: a local file store in output_dir/mlruns
    (MLflow 3 calls file stores legacy: its UI needs MLFLOW_ALLOW_FILE_STORE=true to open one)."""
    mlflow_experiment: str = "grpokit"
    """MLflow experiment the run is logged under."""
    log_completions_steps: int = Field(10, ge=0)
    """Every this many steps, log a sample of completions (prompt, completion, each reward,
    advantage) to completions.jsonl and the text views of the sinks (0: off)."""
    log_completions_count: int = Field(4, ge=1)
    """Completions in each sample."""
    eval_steps: int = Field(0, ge=0)
    """Evaluate on held-out problems every this many steps and log eval/pass@1,
    eval/greedy_accuracy, ... (0: off; TRL's name). Uses the run's `eval` settings."""
    eval_on_start: bool = False
    """Also evaluate before the first step (logged as step 0), so eval/ curves start at the
    starting model (TRL's name); needs eval_steps > 0."""
    eval_num_problems: int = Field(32, ge=1)
    """Held-out problems in each periodic evaluation."""
    webhook_url: str | None = None
    """POST each alert as JSON to this URL. It is written to config.yaml: prefer webhook_url_env
    for URLs that hold a secret."""
    webhook_url_env: str | None = None
    """Name of an environment variable holding the webhook URL (used when webhook_url is None)."""
    webhook_timeout: float = Field(5.0, gt=0)
    """Seconds to wait for the webhook; a failed or slow POST is reported and training goes on."""
    rollback_lr_factor: float = Field(0.5, gt=0, le=1)
    """A rule with action rollback reloads the last checkpoint and multiplies the learning rate
    by this."""
    max_rollbacks: int = Field(3, ge=0)
    """Rollbacks allowed in one run; a rollback alert after them (or with no checkpoint to go back
    to, so set save_steps) stops training instead."""
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    """The alert rules and their thresholds."""


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
    """Truncated importance sampling for a sampler whose log-probs differ from the policy's (a
    faster engine, another precision): each token's loss is weighted by
    min(p_policy / p_sampler, tis_cap). None: off. TRL: vllm_importance_sampling_mode
    token_truncate with vllm_importance_sampling_clip_max (3.0 there)."""
    dynamic_sampling: Literal["off", "drop", "refill"] = "off"
    """DAPO's dynamic sampling: 'refill' drops groups whose rewards are all equal and samples
    more prompts until prompts_per_step groups with signal are found (at most
    max_sampling_rounds rounds of prompts_per_step prompts); 'drop' only drops the groups whose
    advantages are all zero (a smaller batch, no extra sampling)."""
    max_sampling_rounds: int = Field(3, ge=1)
    """With dynamic_sampling 'refill': the most rounds of prompts_per_step prompts sampled per
    step (a batch still short after them trains on the groups it has)."""
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


class SampleConfig(Section):
    """Rejection sampling: k completions per prompt, kept when they pass the verifiers."""

    output_dir: str = "runs/sample"
    """Where sft.jsonl (the kept completions with provenance) and summary.json are written."""
    num_samples: int = Field(8, ge=1)
    """Completions sampled per prompt (k)."""
    num_prompts: int | None = Field(None, ge=1)
    """Training prompts to sample from (None: all of them)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_completion_length: int = Field(256, ge=1)
    """Most tokens sampled per completion."""
    min_rewards: dict[str, float] = Field(default_factory=lambda: {"format": 1.0, "correctness": 1.0})
    """Verifiers: a completion is kept only if each named reward (from `rewards`) is at least this
    value; a reward that returns None for a sample does not block it."""
    judge: dict[str, Any] | None = None
    """Optional LLM judge (the keys of grpokit.rewards.judge.JudgeConfig); asked only about
    completions that passed the verifiers."""
    judge_min_score: float = Field(0.5, ge=0, le=1)
    """Normalised judge score a completion needs to be kept."""
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1)
    """Drop a completion whose character 3-gram Jaccard similarity to one already kept for the
    same prompt is at least this (1.0: exact duplicates only)."""
    max_per_prompt: int = Field(2, ge=1)
    """Most completions kept per prompt."""
    difficulty_column: str | None = None
    """Dataset column that names each prompt's difficulty for the acceptance report; None buckets
    prompts by the share of their samples that pass the verifiers."""
    batch_prompts: int = Field(64, ge=1)
    """Prompts sampled together (memory bound only)."""
    seed: int = 0
    """Sampling seed."""
    device: str = "auto"
    """'auto' picks CUDA when present, else CPU."""


class EvalConfig(Section):
    """Held-out evaluation: k samples per problem plus one greedy completion."""

    output_dir: str = "runs/eval"
    """Where summary.json and samples.jsonl are written."""
    num_samples: int = Field(8, ge=1)
    """Samples per problem (k) for pass@1, pass@k and maj@k."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature for the k samples (greedy accuracy is measured separately)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_completion_length: int = Field(256, ge=1)
    """Most tokens sampled per completion."""
    num_problems: int = Field(200, ge=1)
    """Held-out problems evaluated."""
    batch_prompts: int = Field(64, ge=1)
    """Problems sampled together (memory bound only)."""
    seed: int = 1234
    """Sampling seed."""
    device: str = "auto"
    """'auto' picks CUDA when present, else CPU."""


class DataConfig(Section):
    """Where prompts come from: a built-in task or a dataset file."""

    task: str | None = "digit_sum"
    """Built-in task, used when path is not set: 'digit_sum' (the embedded default's task) or
    'reasoning_gym' (any reasoning-gym dataset; needs the [real] extra)."""
    task_options: dict[str, Any] = Field(default_factory=dict)
    """Options of the task: for reasoning_gym {dataset: chain_sum, config: {...the dataset's
    own config keys...}, system_prompt: ...}; for digit_sum min_digits, max_digits, slip_rate,
    no_reasoning_rate, hedge_rate. num_train, num_test and seed below give the sizes and seed."""
    path: str | None = None
    """A .jsonl/.json/.csv/.parquet file or a save_to_disk directory with a 'prompt' column."""
    num_train: int = Field(4000, ge=1)
    """Training prompts generated from the task."""
    num_test: int = Field(200, ge=1)
    """Held-out problems generated from the task (disjoint from training)."""
    seed: int = 0
    """Seed of the task generator."""
    test_path: str | None = None
    """Held-out rows (prompt, answer) for `grpokit eval`; None generates them from the task."""
    format: Literal["none", "gsm8k", "math"] = "none"
    """Row format of path/test_path: 'gsm8k' (question, answer ending '#### 42') or 'math' (problem,
    solution with \\boxed{}) become prompt + final answer; 'none' reads prompt/answer as they are."""
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    """System message put before each gsm8k/math question (None: no system message)."""
    chat: bool = True
    """Make gsm8k/math prompts chat-message lists (rendered with the tokenizer's chat template)."""


class StageSpec(Section):
    """One stage of `grpokit pipeline`."""

    name: str = Field(min_length=1)
    """Stage name: its directory under pipeline.output_dir, and how later stages refer to it."""
    type: Literal["sft", "grpo", "ppo", "rejection_sample", "rm"]
    """What the stage runs; sft/grpo/ppo produce a policy, rejection_sample an SFT set, rm a
    reward model."""
    init: str = "previous"
    """Model the stage starts from: 'previous' (the latest policy), 'base' (the run's model), or
    an earlier stage's name."""
    data_from: str | None = None
    """For sft: an earlier rejection_sample stage whose sft.jsonl is this stage's training set."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Run-config keys for this stage only, merged over the top-level config, e.g.
    {grpo: {max_steps: 50}, rewards: [...]}; the string '${stage}' becomes that stage's output."""
    evaluate: bool = True
    """Evaluate the stage's policy on the held-out problems (policy stages only)."""


class PipelineConfig(Section):
    """`grpokit pipeline`: stages run in order, each policy stage starting from the previous one."""

    output_dir: str = "runs/pipeline"
    """Each stage writes to output_dir/<stage name>; pipeline_state.json records finished stages."""
    stages: list[StageSpec] = Field(default_factory=list)
    """The stages, in order (names must be unique)."""
    score_with: str | None = None
    """An rm stage whose reward model scores every evaluated stage's held-out samples (reported as
    eval.reward_model_score)."""
    evaluate_base: bool = False
    """Evaluate the starting model too, as a 'base' column before the stages."""


class RunConfig(Section):
    """A whole run: which model, which data and rewards, and each stage's settings."""

    model: str = "embedded"
    """A local save_pretrained model directory, 'embedded' (the 0.8M-parameter default, created in
    code), or a built-in pretrained model by name ('smollm2-135m-instruct'; `grpokit models list`),
    converted once into the cache."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Prompt source."""
    rewards: list[str | dict[str, Any]] = Field(default_factory=lambda: ["format", "correctness"])
    """Reward functions by registered name or 'package.module:function'; a mapping {name: ..., **kwargs} binds keyword arguments."""
    sft: SFTConfig = Field(default_factory=SFTConfig)
    """Stage settings for `grpokit sft`."""
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    """Stage settings for `grpokit train`."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Stage settings for `grpokit eval`."""
    sample: SampleConfig = Field(default_factory=SampleConfig)
    """Stage settings for `grpokit sample` (rejection sampling)."""
    rm: RewardModelConfig = Field(default_factory=RewardModelConfig)
    """Stage settings for `grpokit rm` (reward-model training)."""
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    """Stage settings for `grpokit ppo`."""
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    """Stages for `grpokit pipeline`."""


Location = tuple  # a key path into the config tree: section names and list indices


def apply_override(tree: dict, dotted: str) -> Location:
    """Apply ``"a.b=value"`` to a nested dict; the value is parsed as YAML. In a list of named
    entries (pipeline stages) a key picks the entry with that ``name``. Returns the key path it
    set (list entries by index), so errors under it can name the override.

    >>> tree = {"grpo": {"beta": 0.0}, "stages": [{"name": "rm", "overrides": {}}]}
    >>> apply_override(tree, "grpo.beta=0.04"), tree["grpo"]
    (('grpo', 'beta'), {'beta': 0.04})
    >>> apply_override(tree, "stages.rm.overrides.rm.max_steps=5"); tree["stages"]
    ('stages', 0, 'overrides', 'rm', 'max_steps')
    [{'name': 'rm', 'overrides': {'rm': {'max_steps': 5}}}]
    """
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key.path=value")
    path, raw = dotted.split("=", 1)
    *parents, leaf = path.strip().split(".")
    node, location = tree, []
    for key in parents:
        node, step = _child(node, key, dotted)
        location.append(step)
    try:
        node[leaf] = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer past 4,300 digits
        raise ConfigError(f"override {dotted!r}: the value is not valid YAML ({error})") from None
    return (*location, leaf)


def _child(node: dict | list, key: str, dotted: str) -> tuple[dict, str | int]:
    """The section ``key`` of ``node`` (created when absent), or the list entry named ``key``,
    and how a key path names it (the key, or the entry's index)."""
    if isinstance(node, list):
        named = [i for i, entry in enumerate(node) if isinstance(entry, dict) and entry.get("name") == key]
        if not named:
            names = [entry.get("name") for entry in node if isinstance(entry, dict)]
            raise ConfigError(f"override {dotted!r}: no entry named {key!r} (entries: {names})")
        return node[named[0]], named[0]
    if node.get(key) is None:  # absent, or an empty YAML section
        node[key] = {}
    if not isinstance(node[key], (dict, list)):
        raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    return node[key], key


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None) and apply overrides; every
    problem is reported at once, each naming the file or the override it comes from."""
    source = str(path) if path else "defaults"
    tree: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {source!r} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer past 4,300 digits
            raise ConfigError(f"config file {source!r} is not valid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {source!r}: expected a mapping at the top level")
    set_by = {apply_override(tree, dotted): dotted for dotted in overrides}
    return validate(RunConfig, tree, source, set_by)


def validate(model: type[BaseModel], tree: dict, source: str,
             set_by: dict[Location, str] | None = None) -> Any:
    """Build ``model`` from ``tree``; validation errors become one ConfigError with a line per
    problem. ``set_by`` maps the key paths that command-line overrides set to those overrides,
    so a problem under one names the override instead of ``source``."""
    try:
        return model.model_validate(tree)
    except ValidationError as error:
        lines = problems(error, model, set_by or {}, source)
        header, prefix = (source, f"{source}: ") if all(
            line.startswith(f"{source}: ") for line in lines) else ("config", "")
        body = [line.removeprefix(prefix) for line in lines]
        if len(body) == 1:
            raise ConfigError(body[0] if header == "config" else f"{header}: {body[0]}") from None
        raise ConfigError(f"{header}: {len(body)} problems:\n  " + "\n  ".join(body)) from None


def problems(error: ValidationError, model: type[BaseModel], set_by: dict[Location, str] | None = None,
             source: str | None = None) -> list[str]:
    """One line per problem, ``[source: ]key.path: message (got value)``; an unknown key gets
    the nearest valid name of its section.

    >>> try:
    ...     RunConfig.model_validate({"grpo": {"num_generation": 4, "beta": -1}})
    ... except ValidationError as error:
    ...     for line in problems(error, RunConfig):
    ...         print(line)
    grpo.beta: Input should be greater than or equal to 0 (got -1)
    grpo.num_generation: unknown key; did you mean 'num_generations'?
    """
    lines = []
    for item in error.errors():
        location = tuple(item["loc"])
        key = _dotted(location)
        if item["type"] == "extra_forbidden":
            section = _model_at(model, location[:-1])
            valid = list(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
            message = (f"unknown key; did you mean {close[0]!r}?" if close
                       else f"unknown key; valid keys here: {', '.join(sorted(valid))}")
        else:
            hidden = isinstance(item["input"], dict) or model.model_config.get("hide_input_in_errors")
            got = "" if hidden else f" (got {item['input']!r})"
            message = item["msg"].removeprefix("Value error, ") + got
        origin = _origin(location, set_by or {}) or source
        lines.append(f"{origin}: {key}: {message}" if origin else f"{key}: {message}")
    return lines


def _dotted(location: Location) -> str:
    """``('pipeline', 'stages', 1, 'type')`` -> ``'pipeline.stages[1].type'``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _model_at(model: type[BaseModel], location: Location) -> type[BaseModel] | None:
    """The section class at ``location`` (list indices skipped), or None past the sections."""
    for part in location:
        if isinstance(part, int):
            continue
        model = _section_of(model, part)
        if model is None:
            return None
    return model


def _origin(location: Location, set_by: dict[Location, str]) -> str | None:
    """The override that set ``location`` or a section holding it (the most specific one)."""
    covering = [path for path in set_by if location[: len(path)] == path or path[: len(location)] == location]
    return f"override {set_by[max(covering, key=len)]!r}" if covering else None


def write_resolved(config: BaseModel, output_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML to ``output_dir/name``.

    Trainers write their own section as ``config.yaml``; the CLI stages also write the whole
    run tree (model, data, rewards, every section) as ``run_config.yaml``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    return target


def reference_markdown(model: type[Section] = RunConfig, prefix: str = "",
                       seen: dict[type, str] | None = None) -> str:
    """A markdown table of every key, its default and its meaning (for the README).

    A nested section shared by several stages (``monitor``) is listed in full once; later
    occurrences get one row pointing at the first.
    """
    seen = {} if seen is None else seen
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            if annotation in seen:
                rows.append(f"| `{prefix}{name}` | | The same keys as `{seen[annotation]}.*`. |")
                continue
            seen[annotation] = f"{prefix}{name}"
            rows.append(reference_markdown(annotation, f"{prefix}{name}.", seen))
            continue
        default = field.get_default(call_default_factory=True)
        doc = " ".join((field.description or "").split())
        rows.append(f"| `{prefix}{name}` | `{default!r}` | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print("| key | default | meaning |\n|---|---|---|\n" + reference_markdown())
