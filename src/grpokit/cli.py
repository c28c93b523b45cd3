"""``grpokit demo | sft | train | eval``: each stage from a YAML config plus dotted overrides."""

from __future__ import annotations

from pathlib import Path

import typer
from transformers.utils import logging as hf_logging

from grpokit.config import ConfigError, RunConfig, load_config
from grpokit.demo import run_demo
from grpokit.stages import base_model, run_eval, run_grpo, run_sft

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="GRPO training for language models. Overrides: key.path=value.")

ConfigArg = typer.Argument(..., help="A YAML run config (see the README's config reference).")
OverridesArg = typer.Argument(None, help="Dotted overrides such as grpo.beta=0.04.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


hf_logging.disable_progress_bar()  # per-file load/save bars; the stages show their own


def _load(config: Path | None, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as error:
        typer.secho(f"config error: {error}", fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def demo(
    output_dir: Path = typer.Option(Path("runs/demo"), help="Where every stage writes."),
    overrides: list[str] = OverridesArg,
    progress: bool = ProgressOpt,
) -> None:
    """Train the embedded default on digit sums: SFT, then GRPO, with held-out results."""
    try:
        run_demo(output_dir, overrides or [], show_progress=progress)
    except ConfigError as error:
        typer.secho(f"config error: {error}", fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def sft(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt) -> None:
    """Supervised fine-tuning (stage 1) with the `sft` section."""
    cfg = _load(config, overrides)
    model_dir = run_sft(cfg, base_model(cfg, cfg.sft.output_dir), progress)
    typer.echo(f"model: {model_dir}")


@app.command()
def train(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt) -> None:
    """GRPO with the `grpo` section and the `rewards` list."""
    cfg = _load(config, overrides)
    model_dir = run_grpo(cfg, base_model(cfg, cfg.grpo.output_dir), progress)
    typer.echo(f"model: {model_dir}")


@app.command("eval")
def evaluate(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt) -> None:
    """pass@1, pass@k, maj@k, greedy accuracy and format rate of `model` on held-out problems."""
    cfg = _load(config, overrides)
    metrics = run_eval(cfg, base_model(cfg, cfg.eval.output_dir), cfg.eval.output_dir, progress)
    for key, value in metrics.items():
        typer.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    app()
