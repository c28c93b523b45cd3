"""The ``monitor`` section: metric sinks, alert rules and what each alert does."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from grpokit.config.sections import Section


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
