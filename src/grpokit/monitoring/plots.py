"""Training curves from ``metrics.jsonl`` rows, drawn with matplotlib's Agg canvas as PNG bytes.

Each :class:`PlotSpec` names the metric keys it draws by a regular expression, so a run that
never logged a metric (an SFT stage has no KL) simply has no such plot. Figures are built
with ``matplotlib.figure.Figure`` directly, never pyplot, so drawing leaves the caller's
matplotlib backend and global state alone.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["PLOTS", "EVAL_METRICS", "PlotSpec", "metric_series", "plot_png", "stage_eval_png"]

Series = dict[str, tuple[list[float], list[float]]]  # key -> (steps, values)


@dataclass(frozen=True)
class PlotSpec:
    """One plot: the metric keys it draws (a full-match regex) and how."""

    name: str
    """File stem of the PNG."""
    title: str
    keys: str
    """Regex that a metric key must match in full to be drawn."""
    ylabel: str
    stacked: bool = False
    """Stack the series (parts of a whole, such as the step time split)."""
    kinds: tuple[str, ...] | None = None
    """The run kinds (summary.json 'stage': sft, grpo, ppo, rm) that log these metrics; None: all."""
    against_time: bool = False
    """x is training seconds (the cumulative sum of time/step, evaluations left out), not steps."""
    optional: bool = False
    """Only some runs of its kinds log these metrics (episodes with tools): left out, not listed
    as skipped, when they are absent."""

    def applies_to(self, kind: str | None) -> bool:
        return self.kinds is None or kind is None or kind in self.kinds


SAMPLING = ("grpo", "ppo")  # the runs that sample and score completions


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("reward", "Reward per function", r"(?:process_)?reward/(?:[^/]+/)?mean", "mean reward",
             kinds=SAMPLING),
    PlotSpec("eval", "Held-out accuracy", r"eval/(?:pass@\w+|maj@\w+|greedy_accuracy|format_rate|accuracy)",
             "fraction"),
    PlotSpec("eval_time", "Held-out accuracy against training time",
             r"eval/(?:pass@1|format_rate)", "fraction", against_time=True, kinds=SAMPLING),
    PlotSpec("loss", "Loss", r"loss|loss/.+|train/loss", "loss"),
    PlotSpec("kl", "KL to the reference", r"kl|policy/approx_kl", "KL", kinds=SAMPLING),
    PlotSpec("entropy", "Entropy", r"entropy", "nats per token", kinds=SAMPLING),
    PlotSpec("length", "Completion length", r"completion/(?:mean|min|max)_length", "tokens", kinds=SAMPLING),
    PlotSpec("clip", "Clip ratios", r"clip_ratio/.+", "fraction of tokens (of sequences under GSPO)",
             kinds=SAMPLING),
    PlotSpec("time", "Step time split", r"time/(?:generate|environment|score|reference|train)", "seconds",
             stacked=True, kinds=SAMPLING),
    PlotSpec("agent_turns", "Turns per episode", r"agent/turns_(?:mean|max)", "model turns", kinds=SAMPLING,
             optional=True),
    PlotSpec("agent_tools", "Tool calls and their failures per step",
             r"agent/(?:tool_calls|malformed_calls|tool_errors/.+)", "calls", kinds=SAMPLING, optional=True),
    PlotSpec("agent_tokens", "Tokens per episode by role", r"agent/(?:model|environment)_tokens_mean", "tokens",
             stacked=True, kinds=SAMPLING, optional=True),
)

#: Held-out metrics in [0, 1] that the per-stage bar chart compares.
EVAL_METRICS = ("pass@1", "greedy_accuracy", "maj@k", "pass@k", "format_rate")


def metric_series(rows: list[dict], keys: str) -> Series:
    """Steps and values of every metric whose key matches ``keys``, in order of first appearance.

    Missing, null and non-finite values are left out, so a metric logged every few steps
    (held-out accuracy) has only those steps.

    >>> rows = [{"step": 1, "kl": 0.0, "loss": 2.0}, {"step": 2, "kl": None}, {"step": 3, "kl": 0.5}]
    >>> metric_series(rows, r"kl")
    {'kl': ([1, 3], [0.0, 0.5])}
    """
    pattern, found = re.compile(keys), {}
    for index, row in enumerate(rows):
        for key, value in row.items():
            if not pattern.fullmatch(key) or not _is_number(value):
                continue
            steps, values = found.setdefault(key, ([], []))
            steps.append(row.get("step", index + 1))
            values.append(float(value))
    return found


def training_seconds(rows: list[dict]) -> dict[int, float]:
    """Step -> seconds of training up to the end of that step (the sum of ``time/step``; the
    periodic evaluations are not counted). Step 0 is the start.

    >>> training_seconds([{"step": 0, "eval/pass@1": 0.3}, {"step": 1, "time/step": 2.0}, {"step": 2, "time/step": 3.0}])
    {0: 0.0, 1: 2.0, 2: 5.0}
    """
    clock, total = {0: 0.0}, 0.0
    for index, row in enumerate(rows):
        total += row.get("time/step") or 0.0
        clock[row.get("step", index + 1)] = total
    return clock


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_png(spec: PlotSpec, rows: list[dict]) -> bytes | None:
    """The plot of ``spec`` as PNG bytes; None when ``rows`` hold none of its metrics."""
    series = metric_series(rows, spec.keys)
    if not series or (spec.against_time and not any("time/step" in row for row in rows)):
        return None
    if spec.against_time:
        clock = training_seconds(rows)
        series = {key: ([clock[s] for s in steps], values) for key, (steps, values) in series.items()}
    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    if spec.stacked:
        _draw_stacked(ax, series)
    else:
        for key, (steps, values) in series.items():
            ax.plot(steps, values, label=key, linewidth=1.2, marker="o" if len(steps) <= 20 else None)
    ax.set(title=spec.title, xlabel="training seconds" if spec.against_time else "step", ylabel=spec.ylabel)
    ax.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=min(len(series), 3), fontsize="small")
    return _png(figure)


def _draw_stacked(ax, series: Series) -> None:
    """Stack the series over the union of their steps (a step missing from one counts as 0)."""
    steps = sorted({s for key_steps, _ in series.values() for s in key_steps})
    layers = [[dict(zip(*series[key])).get(s, 0.0) for s in steps] for key in series]
    if len(steps) > 1:
        ax.stackplot(steps, *layers, labels=list(series))
        return
    bottom = 0.0
    for key, layer in zip(series, layers):  # one step: a stacked bar, as a stackplot would be invisible
        ax.bar(steps, layer, bottom=bottom, label=key, width=0.6)
        bottom += layer[0]


def stage_eval_png(stages: list[dict]) -> bytes | None:
    """Grouped bars of :data:`EVAL_METRICS` per evaluated stage (``stages``: ``{name, eval}``)."""
    evaluated = [s for s in stages if s.get("eval")]
    metrics = [m for m in EVAL_METRICS if any(_is_number(s["eval"].get(m)) for s in evaluated)]
    if not metrics:
        return None
    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    width = 0.8 / len(evaluated)
    for i, stage in enumerate(evaluated):
        values = [stage["eval"].get(m) if _is_number(stage["eval"].get(m)) else 0.0 for m in metrics]
        ax.bar([j + (i - (len(evaluated) - 1) / 2) * width for j in range(len(metrics))], values, width,
               label=stage["name"])
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set(title="Held-out evaluation by stage", ylabel="fraction", ylim=(0, 1.05))
    ax.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=min(len(evaluated), 6), fontsize="small")
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()
