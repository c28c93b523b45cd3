"""Metric sinks, alert rules, the run's completions log and summary; the callbacks that run them
during training live in ``grpokit.monitoring.callbacks``."""

from grpokit.monitoring.alerts import RULES, Alert, StepRecord
from grpokit.monitoring.sinks import SINKS, MetricsWriter, SinkOptions, register_sink

__all__ = ["RULES", "SINKS", "Alert", "MetricsWriter", "SinkOptions", "StepRecord", "register_sink"]
