"""Metric sinks and progress display."""

from grpokit.monitoring.sinks import MetricsWriter, progress_bar

__all__ = ["MetricsWriter", "progress_bar"]
