"""Alert rules: each fires on a synthetic failure and stays quiet on a healthy run."""

import math
import random
import statistics

import pytest

from grpokit.config import AlertsConfig
from grpokit.monitoring.alerts import (
    RULES,
    EntropyCollapse,
    KLAbove,
    LengthShift,
    NoLearningSignal,
    NonFinite,
    RewardHacking,
    RewardShift,
    StepRecord,
    TruncationAbove,
    build_rules,
)


def feed(rule, metric_rows, rewards=None):
    """Run ``rule`` over steps 1..n; return {step: alert} for the steps that fired."""
    fired = {}
    for step, metrics in enumerate(metric_rows, start=1):
        samples = tuple(rewards[step - 1]) if rewards else ()
        alert = rule.update(StepRecord(step, metrics, samples))
        if alert is not None:
            fired[step] = alert
    return fired


def healthy_run(steps=120, seed=0, eval_every=10):
    """A GRPO run that learns normally, shaped like the demo's GRPO stage (16 prompts × 8
    completions, 0/1 format and correctness rewards, entropy decaying from 0.14 to 0.03 nats,
    mean length 34 ± 1.5 tokens, almost nothing truncated) plus a small KL (beta > 0) and a
    held-out pass@1 that rises with noise every ``eval_every`` steps."""
    rng, records = random.Random(seed), []
    for step in range(1, steps + 1):
        progress = step / steps
        fmt = [float(rng.random() < 0.88 + 0.09 * progress) for _ in range(128)]
        correct = [float(rng.random() < 0.38 + 0.35 * progress) for _ in range(128)]
        total = [f + c for f, c in zip(fmt, correct)]
        groups = [total[i : i + 8] for i in range(0, 128, 8)]
        metrics = {
            "reward/mean": statistics.fmean(total), "reward/std": statistics.stdev(total),
            "reward/format/mean": statistics.fmean(fmt), "reward/correctness/mean": statistics.fmean(correct),
            "reward/frac_zero_std": statistics.fmean(max(g) == min(g) for g in groups),
            "kl": abs(0.002 + 0.02 * progress + rng.gauss(0, 0.002)),
            "entropy": 0.14 * math.exp(-1.45 * progress) * (1 + rng.gauss(0, 0.1)),
            "completion/mean_length": 34 + rng.gauss(0, 1.5),
            "completion/truncated_frac": rng.choice([0.0, 0.0, 0.0, 0.0078]),
            "loss": rng.gauss(0, 0.01), "grad_norm": abs(rng.gauss(0.5, 0.1)),
        }
        if step % eval_every == 0:
            metrics["eval/pass@1"] = 0.4 + 0.3 * progress + rng.gauss(0, 0.02)
        records.append(StepRecord(step, metrics, tuple(total)))
    return records


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_is_quiet_on_a_healthy_run_at_default_thresholds(name, seed):
    (rule, _), = [(r, a) for r, a in build_rules(AlertsConfig()) if r.name == name]
    fired = [alert.message for record in healthy_run(seed=seed) if (alert := rule.update(record))]
    assert fired == []


def test_every_rule_has_a_config_section_and_off_leaves_it_out():
    assert set(RULES) <= set(AlertsConfig.model_fields)
    config = AlertsConfig(kl={"action": "off", "max_kl": 0.2}, truncation={"action": "stop", "max_rate": 0.3})
    rules = {rule.name: (rule, action) for rule, action in build_rules(config)}
    assert "kl" not in rules and len(rules) == len(RULES) - 1
    assert rules["truncation"][0].max_rate == 0.3 and rules["truncation"][1] == "stop"


def test_reward_shift_fires_on_a_ks_gap_above_the_bound():
    rule = RewardShift(window=3, max_ks=0.5)
    rewards = [[0, 0, 1, 1]] * 3 + [[1, 1, 1, 1], [2, 2, 2, 2]]
    fired = feed(rule, [{}] * 5, rewards)
    # step 4: pooled window {0: 6, 1: 6} vs all 1s → D = F_window(0) − F_step(0) = 0.5, not above
    # step 5: window of steps 2–4 {0: 4, 1: 8} vs all 2s → D = F_window(1) − 0 = 1.0
    assert list(fired) == [5]
    assert fired[5].values["ks"] == 1.0
    assert fired[5].values["window_mean"] == pytest.approx(8 / 12)


def test_kl_fires_only_above_the_bound():
    fired = feed(KLAbove(max_kl=0.5), [{"kl": 0.5}, {"kl": 0.6}, {"kl": float("nan")}])
    assert list(fired) == [2] and fired[2].values == {"kl": 0.6, "max_kl": 0.5}


def test_entropy_fires_below_the_floor_and_on_a_drop_against_the_window_median():
    floor = feed(EntropyCollapse(min_entropy=0.01, max_drop_factor=4, window=4),
                 [{"entropy": 0.5}, {"entropy": 0.005}])
    assert list(floor) == [2] and "floor" in floor[2].message
    drop = feed(EntropyCollapse(min_entropy=0.01, max_drop_factor=4, window=4),
                [{"entropy": e} for e in (0.8, 1.0, 1.2, 1.0, 0.3, 0.2)])
    # step 5: median(0.8, 1.0, 1.2, 1.0) = 1.0, 0.3 ≥ 1.0/4; step 6: median(1.0, 1.2, 1.0, 0.3) = 1.0, 0.2 < 0.25
    assert list(drop) == [6] and drop[6].values == {"entropy": 0.2, "window_median": 1.0}


def test_length_fires_when_exploding_or_collapsing_against_the_rolling_median():
    steps = lambda *lengths: [{"completion/mean_length": n} for n in lengths]  # noqa: E731
    exploding = feed(LengthShift(window=3, max_ratio=3.0, min_ratio=0.3), steps(30, 34, 32, 96, 110))
    # step 4: 96 / median(30, 34, 32) = 3.0 is not above 3; step 5: 110 / median(34, 32, 96) = 3.24
    assert list(exploding) == [5]
    assert exploding[5].values == pytest.approx({"mean_length": 110, "window_median": 34, "ratio": 110 / 34})
    collapsing = feed(LengthShift(window=3, max_ratio=3.0, min_ratio=0.3), steps(30, 34, 32, 9))
    assert list(collapsing) == [4] and collapsing[4].values["ratio"] == pytest.approx(9 / 32)
    assert "collapsing" in collapsing[4].message


def test_truncation_fires_above_the_bound():
    fired = feed(TruncationAbove(max_rate=0.5),
                 [{"completion/truncated_frac": 0.5}, {"completion/truncated_frac": 0.625}])
    assert list(fired) == [2] and "62.5%" in fired[2].message


def test_no_signal_fires_after_k_steps_in_a_row():
    frac = lambda *values: [{"reward/frac_zero_std": v} for v in values]  # noqa: E731
    assert feed(NoLearningSignal(min_frac_zero_std=0.9, steps=3), frac(0.95, 0.5, 0.95, 0.95)) == {}
    fired = feed(NoLearningSignal(min_frac_zero_std=0.9, steps=3), frac(0.95, 1.0, 0.9, 0.95, 1.0, 0.9))
    assert list(fired) == [3, 6]  # the run count restarts after each firing


def test_non_finite_names_the_bad_metrics_and_skips_ignored_ones():
    rule = NonFinite(ignore=["reward/*/std"])
    fired = feed(rule, [{"loss": 0.1, "reward/x/std": float("nan"), "text/alerts": "a"},
                        {"loss": float("nan"), "grad_norm": float("inf"), "reward/x/std": float("nan")}])
    assert list(fired) == [2]
    assert fired[2].values == {"grad_norm": "inf", "loss": "nan"}
    assert fired[2].message == "non-finite metrics: grad_norm, loss"


def test_reward_hacking_fires_when_training_reward_rises_while_pass_at_1_falls():
    rows = [{"reward/mean": r} for r in (1.0, 1.0, 1.2, 1.2, 1.4, 1.4)]
    for step, accuracy in ((2, 0.6), (4, 0.55), (6, 0.5)):
        rows[step - 1]["eval/pass@1"] = accuracy
    fired = feed(RewardHacking(evals=3, min_rise=0.05, min_drop=0.05, verifier_reward="correctness",
                               window=20), rows)
    assert list(fired) == [6]
    assert fired[6].values == pytest.approx({"reward_first": 1.0, "reward_last": 1.4,
                                             "pass@1_first": 0.6, "pass@1_last": 0.5})


def test_reward_hacking_fires_when_a_proxy_reward_rises_and_the_verifier_does_not():
    rows = [{"reward/format/mean": f, "reward/correctness/mean": c}
            for f, c in ((0.5, 0.4), (0.5, 0.4), (0.8, 0.4), (0.9, 0.38))]
    fired = feed(RewardHacking(evals=3, min_rise=0.05, min_drop=0.05, verifier_reward="correctness",
                               window=4), rows)
    # format: mean(0.8, 0.9) − mean(0.5, 0.5) = 0.35; correctness: 0.39 − 0.40 = −0.01
    assert list(fired) == [4]
    assert fired[4].values == pytest.approx({"rising_reward": "format", "rise": 0.35,
                                             "verifier_change": -0.01})


def test_reset_empties_a_rules_window():
    rule = LengthShift(window=2, max_ratio=3.0, min_ratio=0.3)
    feed(rule, [{"completion/mean_length": 10}] * 2)
    rule.reset()
    assert rule.update(StepRecord(3, {"completion/mean_length": 100})) is None  # no window yet
