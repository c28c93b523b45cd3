"""Where per-step metrics go: ``metrics.jsonl`` always, plus the sinks named in ``report_to``.

A sink has ``write(step, scalars)``, ``write_text(step, tag, text)`` and ``close()``; the
registry ``SINKS`` maps each ``report_to`` name to a factory ``(output_dir, options, resume)
-> sink`` (``resume``: the run continues from a checkpoint, or after a rollback).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from rich import get_console


class Sink(Protocol):
    def write(self, step: int, scalars: dict[str, float]) -> None: ...

    def write_text(self, step: int, tag: str, text: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class SinkOptions:
    """What sinks need besides the output directory (``MetricsWriter.from_args`` fills it)."""

    logging_steps: int = 1  # the console prints every this many steps
    resume_step: int | None = None  # the checkpoint's step when the run resumes (or rolls back)
    mlflow_tracking_uri: str | None = None  # None: a file store in output_dir/mlruns
    mlflow_experiment: str = "grpokit"
    params: dict[str, Any] = field(default_factory=dict)  # the resolved config, flattened


SINKS: dict[str, Callable[[Path, SinkOptions, bool], Sink]] = {}


def register_sink(name: str):
    """Register a sink factory under the name ``report_to`` uses."""

    def decorate(factory):
        if name in SINKS:
            raise ValueError(f"a metric sink named {name!r} is already registered")
        SINKS[name] = factory
        return factory

    return decorate


class MetricsWriter:
    """Fan each step's metrics out to ``output_dir/metrics.jsonl`` and the ``report_to`` sinks.

    Number values are scalars. String values are text views (a table of completions, alert
    messages): they go to the sinks' text outputs (TensorBoard ``add_text``, MLflow
    ``log_text``) and not to metrics.jsonl, whose lines stay numbers (non-finite ones as null).
    """

    def __init__(self, output_dir: str | Path, report_to: list[str] = (), resume: bool = False,
                 options: SinkOptions | None = None):
        out, options = Path(output_dir), options or SinkOptions()
        unknown = [name for name in report_to if name not in SINKS]
        if unknown:
            raise ValueError(f"report_to names unknown sinks {unknown}; known: {sorted(SINKS)}")
        self.path = out / "metrics.jsonl"
        self.sinks = [JsonlSink(self.path, resume),
                      *(SINKS[name](out, options, resume) for name in report_to)]

    @classmethod
    def from_args(cls, args, resume: bool = False, resume_step: int | None = None) -> MetricsWriter:
        """The writer a trainer's config (an ``OptimConfig``) asks for."""
        options = SinkOptions(args.logging_steps, resume_step, args.monitor.mlflow_tracking_uri,
                              args.monitor.mlflow_experiment, flatten(args.model_dump()))
        return cls(args.output_dir, args.report_to, resume, options)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        texts = {k: v for k, v in metrics.items() if isinstance(v, str)}
        for sink in self.sinks:
            sink.write(step, scalars)
            for tag, text in texts.items():
                sink.write_text(step, tag, text)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class JsonlSink:
    """One JSON object per step; non-finite numbers become null."""

    def __init__(self, path: Path, resume: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a" if resume else "w")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else None) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Text views have their own files (completions.jsonl, alerts.jsonl)."""

    def close(self) -> None:
        self._file.close()


CONSOLE_KEYS = ("reward/mean", "eval/pass@1", "loss", "train/loss", "kl", "entropy",
                "completion/mean_length", "time/step")


def console_line(step: int, scalars: dict[str, float]) -> str:
    """The compact progress line: the headline metrics present, then any alerts that fired.

    >>> console_line(10, {"reward/mean": 0.51234, "kl": 0.00123, "grad_norm": 3.0, "alerts/kl": 1.0})
    'step 10  reward/mean 0.5123  kl 0.00123  alerts: kl'
    """
    parts = [f"step {step}"] + [f"{k} {scalars[k]:.4g}" for k in CONSOLE_KEYS if k in scalars]
    fired = [k.removeprefix("alerts/") for k in scalars if k.startswith("alerts/")]
    return "  ".join(parts + ([f"alerts: {', '.join(fired)}"] if fired else []))


@register_sink("console")
class ConsoleSink:
    """A compact line every ``logging_steps`` steps on the rich console (above any progress bar)."""

    def __init__(self, output_dir: Path, options: SinkOptions, resume: bool):
        self.every = options.logging_steps

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if step % self.every == 0:
            get_console().print(console_line(step, scalars), highlight=False, soft_wrap=True)

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Alerts print themselves when they fire; completions stay in the files."""

    def close(self) -> None:
        """Nothing to release."""


@register_sink("tensorboard")
class TensorBoardSink:
    """Scalars and text in ``output_dir/tensorboard``. A resumed run purges what an earlier
    attempt logged after the checkpoint's step (TensorBoard's ``purge_step``), and a fresh start
    what an earlier run in the directory logged, so no step shows twice."""

    def __init__(self, output_dir: Path, options: SinkOptions, resume: bool):
        from torch.utils.tensorboard import SummaryWriter

        # a fresh start purges an earlier run's events too (from step 1 on)
        purge = (options.resume_step or 0) + 1 if not resume or options.resume_step is not None else None
        self._writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)

    def write_text(self, step: int, tag: str, text: str) -> None:
        self._writer.add_text(tag, text, step)

    def close(self) -> None:
        self._writer.close()


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections become dotted keys (MLflow params are flat).

    >>> flatten({"beta": 0.0, "monitor": {"alerts": {"kl": {"max_kl": 0.5}}}, "report_to": []})
    {'beta': 0.0, 'monitor.alerts.kl.max_kl': 0.5, 'report_to': []}
    """
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics and ``_-. :/``): ``@`` becomes ``_at_``.

    >>> mlflow_name("eval/pass@1"), mlflow_name("reward/f(x)/mean")
    ('eval/pass_at_1', 'reward/f_x_/mean')
    """
    return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))


def mlflow_store(output_dir: Path, tracking_uri: str | None) -> str:
    """The tracking URI: the configured one, else a file store in ``output_dir/mlruns``.

    MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set, so it is set (when
    unset) for a file store.
    """
    uri = tracking_uri or (output_dir / "mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


@register_sink("mlflow")
class MLflowSink:
    """One MLflow run per output directory: the resolved config as params, scalars per step,
    text as artifacts. Its id is kept in ``output_dir/mlflow_run_id``, so a resumed run (or one
    rolled back) continues the same MLflow run."""

    PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # MLflow's log_batch limits

    def __init__(self, output_dir: Path, options: SinkOptions, resume: bool):
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(mlflow_store(output_dir, options.mlflow_tracking_uri))
        id_file = output_dir / "mlflow_run_id"
        if resume and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self._client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self._start_run(options.mlflow_experiment, output_dir.name, options.params)
            id_file.write_text(self.run_id)

    def _start_run(self, experiment_name: str, run_name: str, params: dict) -> str:
        from mlflow.entities import Param

        experiment = self._client.get_experiment_by_name(experiment_name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self._client.create_experiment(experiment_name))
        run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        entries = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(entries), self.PARAMS_PER_CALL):
            self._client.log_batch(run_id, params=entries[start : start + self.PARAMS_PER_CALL])
        return run_id

    def write(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), v, now, step) for k, v in scalars.items()]
        for start in range(0, len(metrics), self.METRICS_PER_CALL):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + self.METRICS_PER_CALL])

    def write_text(self, step: int, tag: str, text: str) -> None:
        self._client.log_text(self.run_id, text, f"{tag}/step_{step:06d}.md")

    def close(self) -> None:
        self._client.set_terminated(self.run_id)
