"""The demos: the R1 recipe's stages (``r1``) or the tool-using agent (``agent``) on the embedded
default, with a held-out table at the end."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grpokit.config import RunConfig, load_config, write_resolved
from grpokit.errors import ConfigError

METRICS = ("pass@1", "greedy_accuracy", "maj@k", "pass@k", "format_rate", "mean_completion_length",
           "harmful_compliance", "over_refusal", "reward_model_score", "pass@1_without_tools", "greedy_accuracy_without_tools")
RECIPES = {"r1": "demo.yaml", "agent": "agent.yaml"}  # grpokit demo --recipe NAME


def demo_config(output_dir: str | Path, overrides: list[str] = (), recipe: str = "r1") -> RunConfig:
    """The packaged demo recipe ``recipe`` (:data:`RECIPES`) writing under ``output_dir``."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r}: the demo recipes are {', '.join(RECIPES)}")
    recipe = resources.files("grpokit.recipes") / RECIPES[recipe]
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


def judge_results(stages: list[dict]) -> dict | None:
    """The ``judge`` block of the first rejection-sampling stage that had a judge (None if none)."""
    for stage in stages:
        summary = Path(stage["output"]).parent / "summary.json"
        if stage["type"] == "rejection_sample" and summary.is_file():
            judge = json.loads(summary.read_text()).get("judge")
            if judge:
                return {"stage": stage["name"], **judge}
    return None


def judge_table(judge: dict) -> Table:
    """What the rejection-sampling judge did: its agreement with the task's labels, and the kept
    set's unacceptable share with and without it."""
    table = Table(title=f"{judge['stage']}: the LLM judge ({judge['asked']} completions judged)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("rejected by the judge", str(judge["rejected"]))
    if "agreement" in judge:
        table.add_row("precision (approved and acceptable / approved)", f"{judge['agreement']['precision']:.3f}")
        table.add_row("recall (approved and acceptable / acceptable)", f"{judge['agreement']['recall']:.3f}")
        for key, label in (("kept_with_judge", "with"), ("kept_without_judge", "without")):
            kept = judge[key]
            table.add_row(f"kept set {label} the judge: unacceptable", f"{kept['unacceptable']} / {kept['kept']}")
    return table


def run_demo(cfg: RunConfig, show_progress: bool = True, console: Console | None = None,
             resume: bool = False) -> dict:
    """Run the demo pipeline ``cfg`` (:func:`demo_config`; finished stages are skipped, and with
    ``resume`` an interrupted one continues from its checkpoint); print and return the summary.

    ``seconds`` in the summary is the time of all stages, summed over the runs that did them
    (a rerun that skips finished stages does not replace it); ``wall_seconds`` is this run's.
    """
    from grpokit.recipes.pipeline import run_pipeline
    from grpokit.monitoring.summary import write_summary

    console, out, started = console or Console(), Path(cfg.pipeline.output_dir), time.perf_counter()
    write_resolved(cfg, out, "run_config.yaml")
    summary = run_pipeline(cfg, show_progress, announce=lambda line: console.print(f"[bold]{line}[/bold]"),
                           resume=resume)
    console.print(results_table(summary["stages"]))
    judge = judge_results(summary["stages"])
    if judge:
        console.print(judge_table(judge))
        summary["judge"] = judge
    summary.update(seconds=sum(stage.get("seconds") or 0.0 for stage in summary["stages"]),
                   wall_seconds=time.perf_counter() - started, k=cfg.eval.num_samples,
                   num_problems=cfg.eval.num_problems)
    write_summary(out, summary)
    console.print(f"done in {summary['wall_seconds']:.0f} s (all stages: {summary['seconds']:.0f} s); "
                  f"summary: {out / 'summary.json'}")
    return summary
