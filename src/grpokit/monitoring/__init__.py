"""Metric sinks, progress display, alert rules (callbacks live in ``grpokit.monitoring.callbacks``,
which imports the evaluation that imports this package)."""

from grpokit.monitoring.alerts import RULES, Alert, StepRecord
from grpokit.monitoring.progress import ProgressReport
from grpokit.monitoring.sinks import SINKS, MetricsWriter, SinkOptions, register_sink

__all__ = ["RULES", "SINKS", "Alert", "MetricsWriter", "ProgressReport", "SinkOptions", "StepRecord",
           "register_sink"]
