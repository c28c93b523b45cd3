"""The demo: the R1 recipe's stages on the embedded default, with a held-out table at the end."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grpokit.config import RunConfig, load_config, write_resolved
from grpokit.pipeline import run_pipeline
from grpokit.trainers.common import write_summary

METRICS = ("pass@1", "greedy_accuracy", "maj@k", "pass@k", "format_rate", "mean_completion_length",
           "reward_model_score")


def demo_config(output_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The packaged demo recipe with the pipeline writing under ``output_dir``."""
    recipe = resources.files("grpokit.recipes") / "demo.yaml"
    with resources.as_file(recipe) as path:
        return load_config(path, [f"pipeline.output_dir={Path(output_dir)}", *overrides])


def results_table(stages: list[dict]) -> Table:
    """One row per metric, one column per evaluated stage."""
    evaluated = [s for s in stages if s.get("eval")]
    table = Table(title="held-out results")
    table.add_column("metric")
    for stage in evaluated:
        table.add_column(stage["name"], justify="right")
    for metric in METRICS:
        if any(metric in s["eval"] for s in evaluated):
            table.add_row(metric, *(f"{s['eval'].get(metric, float('nan')):.3f}" for s in evaluated))
    return table


def run_demo(output_dir: str | Path = "runs/demo", overrides: list[str] = (),
             show_progress: bool = True, console: Console | None = None) -> dict:
    """Run the demo pipeline (finished stages are skipped); print and return the summary."""
    console, out, started = console or Console(), Path(output_dir), time.perf_counter()
    cfg = demo_config(out, overrides)
    write_resolved(cfg, out, "run_config.yaml")
    summary = run_pipeline(cfg, show_progress, announce=lambda line: console.print(f"[bold]{line}[/bold]"))
    console.print(results_table(summary["stages"]))
    summary.update(seconds=time.perf_counter() - started, k=cfg.eval.num_samples,
                   num_problems=cfg.eval.num_problems)
    write_summary(out, summary)
    console.print(f"done in {summary['seconds']:.0f} s; summary: {out / 'summary.json'}")
    return summary
