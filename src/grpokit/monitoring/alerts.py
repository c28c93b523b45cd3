"""Alert rules: each reads one step's metrics (and per-sample rewards) and may return an Alert.

Rules are pure state machines, ``update(record) -> Alert | None`` and ``reset()``, with no I/O;
``grpokit.monitoring.callbacks.AlertMonitor`` runs them and carries out the actions, and saves
their state (``state_dict``) in checkpoints so a resumed run keeps its windows. Each
rule's constructor takes the fields of its config section (``monitor.alerts.<name>``) except
``action``, and ``RULES`` maps those section names to the rule classes.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from bisect import bisect_right
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any, Mapping


@dataclass(frozen=True)
class StepRecord:
    """What the rules see of one step: its metrics and its per-sample total rewards."""

    step: int
    metrics: Mapping[str, Any]
    rewards: tuple[float, ...] = ()


@dataclass
class Alert:
    rule: str
    step: int
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def finite(metrics: Mapping[str, Any], key: str) -> float | None:
    """``metrics[key]`` as a float when it is a finite number, else None.

    >>> finite({"kl": 0.1, "x": float("nan"), "t": "text"}, "kl"), finite({"x": float("nan")}, "x")
    (0.1, None)
    """
    value = metrics.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


class Rule:
    """Base of the rules: ``state`` names the attributes that ``reset()`` creates and that
    checkpoints keep (deques are saved as lists of lists)."""

    name = ""
    state: tuple[str, ...] = ()

    def reset(self) -> None:
        """Stateless unless a rule overrides it."""

    def update(self, record: StepRecord) -> Alert | None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {key: _plain(getattr(self, key)) for key in self.state}

    def load_state_dict(self, saved: dict) -> None:
        self.reset()
        for key in self.state:
            current = getattr(self, key)
            if isinstance(current, deque):
                current.extend(saved[key])
            else:
                setattr(self, key, saved[key])


def _plain(value):
    """Deques and tuples as lists, recursively (what ``torch.load(weights_only=True)`` reads)."""
    if isinstance(value, (deque, list, tuple)):
        return [_plain(v) for v in value]
    return value


def ks_statistic(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs.

    >>> ks_statistic([0, 0, 1, 1], [1, 1, 1, 1])  # F_a(0) = 0.5, F_b(0) = 0
    0.5
    >>> ks_statistic([0, 1, 2], [2, 1, 0]), ks_statistic([0, 0], [1, 1])
    (0.0, 1.0)
    """
    a, b = sorted(a), sorted(b)
    return max(abs(bisect_right(a, x) / len(a) - bisect_right(b, x) / len(b)) for x in set(a) | set(b))


class RewardShift(Rule):
    """The KS statistic between the pooled per-sample rewards of the last ``window`` steps and
    the current step's; quiet until the window is full."""

    name = "reward_shift"
    state = ("history",)

    def __init__(self, window: int, max_ks: float):
        self.window, self.max_ks = window, max_ks
        self.reset()

    def reset(self) -> None:
        self.history: deque[list[float]] = deque(maxlen=self.window)

    def update(self, record: StepRecord) -> Alert | None:
        current = [r for r in record.rewards if math.isfinite(r)]
        if not current:
            return None
        alert = None
        if len(self.history) == self.window:
            reference = list(chain.from_iterable(self.history))
            ks = ks_statistic(reference, current)
            if ks > self.max_ks:
                alert = Alert(self.name, record.step,
                              f"reward distribution shifted: KS {ks:.3f} > {self.max_ks} against the "
                              f"last {self.window} steps (mean {statistics.fmean(reference):.4g} -> "
                              f"{statistics.fmean(current):.4g})",
                              {"ks": ks, "window_mean": statistics.fmean(reference),
                               "step_mean": statistics.fmean(current)})
        self.history.append(current)
        return alert


class KLAbove(Rule):
    """The step's mean per-token KL to the reference above ``max_kl``."""

    name = "kl"

    def __init__(self, max_kl: float):
        self.max_kl = max_kl

    def update(self, record: StepRecord) -> Alert | None:
        kl = finite(record.metrics, "kl")
        if kl is None or kl <= self.max_kl:
            return None
        return Alert(self.name, record.step, f"KL {kl:.4g} is above the bound {self.max_kl}",
                     {"kl": kl, "max_kl": self.max_kl})


class EntropyCollapse(Rule):
    """Entropy below ``min_entropy``, or below the median of the last ``window`` steps divided
    by ``max_drop_factor``."""

    name = "entropy"
    state = ("history",)

    def __init__(self, min_entropy: float, max_drop_factor: float, window: int):
        self.min_entropy, self.max_drop_factor, self.window = min_entropy, max_drop_factor, window
        self.reset()

    def reset(self) -> None:
        self.history: deque[float] = deque(maxlen=self.window)

    def update(self, record: StepRecord) -> Alert | None:
        entropy = finite(record.metrics, "entropy")
        if entropy is None:
            return None
        alert = None
        if entropy < self.min_entropy:
            alert = Alert(self.name, record.step,
                          f"entropy {entropy:.4g} is below the floor {self.min_entropy}",
                          {"entropy": entropy, "min_entropy": self.min_entropy})
        elif len(self.history) == self.window:
            median = statistics.median(self.history)
            if entropy < median / self.max_drop_factor:
                alert = Alert(self.name, record.step,
                              f"entropy {entropy:.4g} fell below 1/{self.max_drop_factor} of its "
                              f"median {median:.4g} over the last {self.window} steps",
                              {"entropy": entropy, "window_median": median})
        self.history.append(entropy)
        return alert


class LengthShift(Rule):
    """Mean completion length above ``max_ratio`` or below ``min_ratio`` times the median of
    the last ``window`` steps' means; quiet until the window is full."""

    name = "length"
    state = ("history",)

    def __init__(self, window: int, max_ratio: float, min_ratio: float):
        self.window, self.max_ratio, self.min_ratio = window, max_ratio, min_ratio
        self.reset()

    def reset(self) -> None:
        self.history: deque[float] = deque(maxlen=self.window)

    def update(self, record: StepRecord) -> Alert | None:
        length = finite(record.metrics, "completion/mean_length")
        if length is None:
            return None
        alert = None
        median = statistics.median(self.history) if len(self.history) == self.window else 0.0
        if median > 0:
            ratio = length / median
            change = ("exploding" if ratio > self.max_ratio
                      else "collapsing" if ratio < self.min_ratio else None)
            if change:
                alert = Alert(self.name, record.step,
                              f"completion length {change}: mean {length:.4g} is {ratio:.3g}x its "
                              f"median {median:.4g} over the last {self.window} steps",
                              {"mean_length": length, "window_median": median, "ratio": ratio})
        self.history.append(length)
        return alert


class TruncationAbove(Rule):
    """More than ``max_rate`` of the step's completions hit max_completion_length."""

    name = "truncation"

    def __init__(self, max_rate: float):
        self.max_rate = max_rate

    def update(self, record: StepRecord) -> Alert | None:
        rate = finite(record.metrics, "completion/truncated_frac")
        if rate is None or rate <= self.max_rate:
            return None
        return Alert(self.name, record.step,
                     f"{rate:.1%} of completions were truncated (bound {self.max_rate:.1%})",
                     {"truncated_frac": rate, "max_rate": self.max_rate})


class NoLearningSignal(Rule):
    """``reward/frac_zero_std`` at least ``min_frac_zero_std`` for ``steps`` steps in a row:
    those groups have zero advantage, so the step barely moves the policy."""

    name = "no_signal"
    state = ("run",)

    def __init__(self, min_frac_zero_std: float, steps: int):
        self.min_frac_zero_std, self.steps = min_frac_zero_std, steps
        self.reset()

    def reset(self) -> None:
        self.run = 0

    def update(self, record: StepRecord) -> Alert | None:
        frac = finite(record.metrics, "reward/frac_zero_std")
        if frac is None:
            return None
        self.run = self.run + 1 if frac >= self.min_frac_zero_std else 0
        if self.run < self.steps:
            return None
        self.run = 0
        return Alert(self.name, record.step,
                     f"no learning signal: at least {self.min_frac_zero_std:.0%} of groups had equal "
                     f"rewards for {self.steps} steps in a row (now {frac:.0%})",
                     {"frac_zero_std": frac, "steps": self.steps})


class NonFinite(Rule):
    """A NaN or Inf in any number-valued metric not matched by an ``ignore`` pattern."""

    name = "non_finite"

    def __init__(self, ignore: list[str]):
        self.ignore = list(ignore)

    def update(self, record: StepRecord) -> Alert | None:
        bad = {key: repr(float(value)) for key, value in record.metrics.items()
               if isinstance(value, (int, float)) and not math.isfinite(value)
               and not any(fnmatch.fnmatchcase(key, pattern) for pattern in self.ignore)}
        if not bad:
            return None
        return Alert(self.name, record.step, f"non-finite metrics: {', '.join(sorted(bad))}", bad)


def reward_function_means(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Each reward function's finite mean, by name, from ``reward/<name>/mean`` keys.

    >>> reward_function_means({"reward/mean": 1.0, "reward/format/mean": 0.5,
    ...                        "reward/format/std": 0.1, "reward/correctness/mean": float("nan")})
    {'format': 0.5}
    """
    names = [k[len("reward/"):-len("/mean")] for k in metrics
             if k.startswith("reward/") and k.endswith("/mean") and k != "reward/mean"]
    return {name: value for name in names
            if (value := finite(metrics, f"reward/{name}/mean")) is not None}


def half_change(series: list[float | None]) -> float | None:
    """Mean of the newer half minus mean of the older half (middle item of an odd length left
    out; None entries skipped); None when either half has no values.

    >>> half_change([1.0, 2.0, None, 3.0, 5.0]), half_change([None, 1.0])
    (2.5, None)
    """
    half = len(series) // 2
    older = [v for v in series[:half] if v is not None]
    newer = [v for v in series[len(series) - half:] if v is not None]
    if not older or not newer:
        return None
    return statistics.fmean(newer) - statistics.fmean(older)


class RewardHacking(Rule):
    """Two signs that the reward is being gamed rather than the task learned.

    1. Over the last ``evals`` periodic evaluations (``eval/pass@1``), the mean training reward
       of the steps since each previous evaluation rose by ``min_rise`` from the first to the
       last while pass@1 fell by ``min_drop``.
    2. Over the last ``window`` steps, some reward function's mean rose by ``min_rise`` from the
       older half to the newer half while the ``verifier_reward`` function's mean did not rise.
    """

    name = "reward_hacking"
    state = ("rewards_since_eval", "evaluations", "function_means")

    def __init__(self, evals: int, min_rise: float, min_drop: float, verifier_reward: str, window: int):
        self.evals, self.min_rise, self.min_drop = evals, min_rise, min_drop
        self.verifier_reward, self.window = verifier_reward, window
        self.reset()

    def reset(self) -> None:
        self.rewards_since_eval: list[float] = []
        self.evaluations: deque[tuple[float, float]] = deque(maxlen=self.evals)  # (reward, pass@1)
        self.function_means: deque[dict[str, float]] = deque(maxlen=self.window)

    def update(self, record: StepRecord) -> Alert | None:
        against_eval = self._reward_up_eval_down(record)
        against_verifier = self._function_up_verifier_flat(record)
        return against_eval or against_verifier

    def _reward_up_eval_down(self, record: StepRecord) -> Alert | None:
        reward = finite(record.metrics, "reward/mean")
        if reward is not None:
            self.rewards_since_eval.append(reward)
        accuracy = finite(record.metrics, "eval/pass@1")
        if accuracy is None or not self.rewards_since_eval:
            return None
        self.evaluations.append((statistics.fmean(self.rewards_since_eval), accuracy))
        self.rewards_since_eval = []
        if len(self.evaluations) < self.evals:
            return None
        (reward_first, accuracy_first), (reward_last, accuracy_last) = (self.evaluations[0],
                                                                        self.evaluations[-1])
        if reward_last - reward_first < self.min_rise or accuracy_first - accuracy_last < self.min_drop:
            return None
        return Alert(self.name, record.step,
                     f"training reward rose {reward_first:.4g} -> {reward_last:.4g} while held-out "
                     f"pass@1 fell {accuracy_first:.4g} -> {accuracy_last:.4g} over the last "
                     f"{self.evals} evaluations",
                     {"reward_first": reward_first, "reward_last": reward_last,
                      "pass@1_first": accuracy_first, "pass@1_last": accuracy_last})

    def _function_up_verifier_flat(self, record: StepRecord) -> Alert | None:
        means = reward_function_means(record.metrics)
        if self.verifier_reward not in means:
            return None
        self.function_means.append(means)
        if len(self.function_means) < self.window:
            return None
        series = lambda name: [m.get(name) for m in self.function_means]  # noqa: E731
        verifier_change = half_change(series(self.verifier_reward))
        if verifier_change is None or verifier_change > 0:
            return None
        changes = {name: half_change(series(name)) for name in means if name != self.verifier_reward}
        rising = {name: c for name, c in changes.items() if c is not None and c >= self.min_rise}
        if not rising:
            return None
        name = max(rising, key=rising.get)
        return Alert(self.name, record.step,
                     f"reward '{name}' rose by {rising[name]:.4g} over the last {self.window} steps "
                     f"while the verifier '{self.verifier_reward}' changed by {verifier_change:.4g}",
                     {"rising_reward": name, "rise": rising[name], "verifier_change": verifier_change})


RULES = {rule.name: rule for rule in (RewardShift, KLAbove, EntropyCollapse, LengthShift,
                                      TruncationAbove, NoLearningSignal, NonFinite, RewardHacking)}


def build_rules(alerts_config) -> list[tuple[Any, str]]:
    """``(rule, action)`` for every rule in an ``AlertsConfig`` whose action is not 'off'."""
    rules = []
    for name, rule_class in RULES.items():
        section = getattr(alerts_config, name)
        if section.action != "off":
            rules.append((rule_class(**section.model_dump(exclude={"action"})), section.action))
    return rules
