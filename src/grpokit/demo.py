"""The demo: SFT then GRPO on the embedded default, with a held-out table after each stage."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grpokit.config import RunConfig, load_config, write_resolved
from grpokit.stages import base_model, run_eval, run_grpo, run_sft
from grpokit.trainers.common import write_summary

METRICS = ("pass@1", "greedy_accuracy", "maj@k", "pass@k", "format_rate", "mean_completion_length")


def demo_config(output_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The packaged demo recipe with every stage writing under ``output_dir``."""
    out = Path(output_dir)
    placed = [f"sft.output_dir={out / 'sft'}", f"grpo.output_dir={out / 'grpo'}",
              f"eval.output_dir={out / 'eval'}"]
    recipe = resources.files("grpokit.recipes") / "demo.yaml"
    with resources.as_file(recipe) as path:
        return load_config(path, placed + list(overrides))


def results_table(stages: list[dict]) -> Table:
    """One row per metric, one column per stage."""
    table = Table(title="held-out results")
    table.add_column("metric")
    for stage in stages:
        table.add_column(stage["name"], justify="right")
    for metric in METRICS:
        table.add_row(metric, *(f"{s['eval'][metric]:.3f}" for s in stages))
    return table


def run_demo(output_dir: str | Path = "runs/demo", overrides: list[str] = (),
             show_progress: bool = True, console: Console | None = None) -> dict:
    """Create the embedded model, run SFT and GRPO, evaluate after each; return the summary."""
    console, out, started = console or Console(), Path(output_dir), time.perf_counter()
    cfg = demo_config(out, overrides)
    write_resolved(cfg, out, "run_config.yaml")
    base = base_model(cfg, out)
    stages = []
    console.print("[bold]stage 1/2: SFT[/bold] on the noisy teacher's demonstrations")
    sft_dir = run_sft(cfg, base, show_progress)
    stages.append({"name": "sft", "model_dir": str(sft_dir),
                   "eval": run_eval(cfg, sft_dir, out / "eval-sft", show_progress)})
    console.print("[bold]stage 2/2: GRPO[/bold] with format + correctness rewards")
    grpo_dir = run_grpo(cfg, sft_dir, show_progress)
    stages.append({"name": "grpo", "model_dir": str(grpo_dir),
                   "eval": run_eval(cfg, grpo_dir, out / "eval-grpo", show_progress)})
    console.print(results_table(stages))
    summary = {"stages": stages, "seconds": time.perf_counter() - started,
               "k": cfg.eval.num_samples, "num_problems": cfg.eval.num_problems}
    write_summary(out, summary)
    console.print(f"done in {summary['seconds']:.0f} s; summary: {out / 'summary.json'}")
    return summary
