"""Metric sinks: metrics.jsonl, console, TensorBoard and MLflow, read back with their own readers."""

import json
import math

import pytest
from rich import get_console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from grpokit.config import ConfigError, GRPOConfig, load_config
from grpokit.monitoring import MetricsWriter, SinkOptions

STEPS = [
    {"reward/mean": 0.5, "eval/pass@1": 0.25, "loss": float("nan"), "text/completions": "| a | b |"},
    {"reward/mean": 0.75, "eval/pass@1": 0.5, "loss": 0.1},
]


def write_steps(writer):
    for step, metrics in enumerate(STEPS, start=1):
        writer.write(step, metrics)
    writer.close()


def test_metrics_jsonl_has_numbers_only_with_non_finite_as_null(tmp_path):
    write_steps(MetricsWriter(tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "reward/mean": 0.5, "eval/pass@1": 0.25, "loss": None},
                     {"step": 2, "reward/mean": 0.75, "eval/pass@1": 0.5, "loss": 0.1}]


def test_tensorboard_gets_scalars_and_text(tmp_path):
    write_steps(MetricsWriter(tmp_path, ["tensorboard"]))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.5), (2, 0.75)]
    assert math.isnan(events.Scalars("loss")[0].value)
    (text,) = events.Tensors("text/completions/text_summary")
    assert text.step == 1 and tensor_util.make_ndarray(text.tensor_proto).tolist() == [b"| a | b |"]


def test_mlflow_local_store_gets_params_metrics_and_text_and_resumes_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    args = GRPOConfig(output_dir=str(tmp_path / "run"), report_to=["mlflow"], learning_rate=3e-4)
    writer = MetricsWriter.from_args(args)
    run_id = writer.sinks[1].run_id
    write_steps(writer)
    resumed = MetricsWriter.from_args(args, resume=True)
    resumed.write(3, {"reward/mean": 1.0})
    resumed.close()

    client = MlflowClient((tmp_path / "run" / "mlruns").resolve().as_uri())
    assert resumed.sinks[1].run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["learning_rate"] == "0.0003"
    assert run.data.params["monitor.alerts.kl.max_kl"] == "0.5"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "reward/mean")] == [
        (1, 0.5), (2, 0.75), (3, 1.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/pass_at_1")] == [
        (1, 0.25), (2, 0.5)]
    text_path = client.download_artifacts(run_id, "text/completions/step_000001.md", str(tmp_path))
    assert open(text_path).read() == "| a | b |"


def test_console_prints_a_compact_line_every_logging_steps(tmp_path):
    writer = MetricsWriter(tmp_path, ["console"], options=SinkOptions(logging_steps=2))
    with get_console().capture() as captured:
        for step in range(1, 5):
            writer.write(step, {"reward/mean": step / 4, "kl": 0.001, "grad_norm": 1.0})
        writer.write(6, {"reward/mean": 1.0, "alerts/kl": 1.0})
    writer.close()
    assert captured.get().splitlines() == ["step 2  reward/mean 0.5  kl 0.001",
                                           "step 4  reward/mean 1  kl 0.001",
                                           "step 6  reward/mean 1  alerts: kl"]


def test_report_to_accepts_the_sink_names_and_rejects_others(tmp_path):
    config = load_config(None, ["grpo.report_to=[console, tensorboard, mlflow]"])
    assert config.grpo.report_to == ["console", "tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="report_to"):
        load_config(None, ["grpo.report_to=[wandb]"])
    with pytest.raises(ValueError, match="unknown sinks \\['wandb'\\]"):
        MetricsWriter(tmp_path, ["wandb"])
