"""``grpokit demo | sft | train | ppo | sample | rm | eval | pipeline | report``: each stage from a
YAML config plus dotted overrides, and the report of a run."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import datasets
import typer
from torch.distributed import DistError
from transformers.utils import logging as hf_logging

from grpokit.checkpoint import CheckpointError
from grpokit.config import ConfigError, RunConfig, load_config
from grpokit.data import DatasetError
from grpokit.demo import run_demo
from grpokit.distributed import Terminated, launched, main_first, raise_on_sigterm, ranks, setup, shutdown
from grpokit.models import ModelLoadError
from grpokit.pipeline import StageStopped, run_pipeline
from grpokit.rewards import RewardFunctionError
from grpokit.rewards.judge import JudgeError
from grpokit.stages import base_model, run_eval, run_grpo, run_ppo, run_rm, run_sample, run_sft
from grpokit.trainers.loop import NonFiniteError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="GRPO training for language models. Overrides: key.path=value.")

ConfigArg = typer.Argument(..., help="A YAML run config (see the README's config reference).")
OverridesArg = typer.Argument(None, help="Dotted overrides such as grpo.beta=0.04.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
ResumeOpt = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the output "
                         "directory, exactly (weights, optimizer, RNG, data position); start afresh "
                         "when there is none.")


hf_logging.disable_progress_bar()  # per-file load/save bars; the stages show their own
hf_logging.set_verbosity_error()  # e.g. the "score.weight newly initialized" report of reward models
datasets.disable_progress_bars()


# errors whose message says what to fix: shown as one line, without a traceback
USER_ERRORS = (ConfigError, DatasetError, ModelLoadError, RewardFunctionError, CheckpointError,
               NonFiniteError, StageStopped, JudgeError)


def command(name: str | None = None, distributed: bool = False):
    """``app.command`` whose known errors end the process with their message (exit code 2).

    Only ``distributed`` commands may run as several processes under torchrun; the others
    refuse. Under torchrun each message names its rank.
    """
    def register(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            where = f"rank {os.environ.get('RANK', '?')}: " if launched() else ""
            try:
                if launched():
                    raise_on_sigterm()
                if launched() and not distributed:
                    raise ConfigError(f"grpokit {name or fn.__name__} runs on one process; launch it "
                                      f"without torchrun (distributed: sft, train, pipeline)")
                return fn(*args, **kwargs)
            except USER_ERRORS as error:
                typer.secho(f"{where}{type(error).__name__}: {error}", fg="red", err=True)
                raise typer.Exit(2) from None
            except Terminated:
                typer.secho(f"{where}stopped: torchrun ends every process when one fails (its report "
                            f"names the first failure). Start the same command again with --resume to "
                            f"continue from the latest checkpoint.", fg="red", err=True)
                raise typer.Exit(3) from None
            except (DistError, RuntimeError) as error:
                if not (launched() and lost_contact(error)):
                    raise
                typer.secho(f"{where}lost contact with the other processes (one of them died, or a "
                            f"collective waited longer than distributed_timeout): {error}. Start the same "
                            f"command again with --resume to continue from the latest checkpoint.",
                            fg="red", err=True)
                raise typer.Exit(3) from None
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                shutdown()
        return app.command(name)(run)
    return register


def lost_contact(error: Exception) -> bool:
    """Whether ``error`` says a collective failed: a dead or silent peer, or a timeout.

    >>> lost_contact(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"))
    True
    >>> lost_contact(RuntimeError("shape mismatch"))
    False
    """
    return isinstance(error, DistError) or any(
        word in str(error) for word in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))


def echo(message: str) -> None:
    """Print a result line (rank 0 only under torchrun)."""
    if ranks().is_main:
        typer.echo(message)


def _load(config: Path | None, overrides: list[str] | None) -> RunConfig:
    return load_config(config, overrides or [])


@command()
def demo(
    output_dir: Path = typer.Option(Path("runs/demo"), help="Where every stage writes."),
    overrides: list[str] = OverridesArg,
    progress: bool = ProgressOpt,
) -> None:
    """The R1 recipe on the embedded default (digit sums): SFT, GRPO, rejection sampling, SFT,
    reward model, GRPO with the reward model; held-out results of every stage."""
    run_demo(output_dir, overrides or [], show_progress=progress)


@command(distributed=True)
def sft(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
        resume: bool = ResumeOpt) -> None:
    """Supervised fine-tuning (stage 1) with the `sft` section (torchrun: several processes)."""
    cfg = _load(config, overrides)
    setup(cfg.sft.distributed_timeout)
    model_dir = run_sft(cfg, main_first(lambda: base_model(cfg, cfg.sft.output_dir)), progress, resume)
    echo(f"model: {model_dir}")


@command(distributed=True)
def train(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
          resume: bool = ResumeOpt) -> None:
    """GRPO with the `grpo` section and the `rewards` list (torchrun: several processes)."""
    cfg = _load(config, overrides)
    setup(cfg.grpo.distributed_timeout)
    model_dir = run_grpo(cfg, main_first(lambda: base_model(cfg, cfg.grpo.output_dir)), progress, resume)
    echo(f"model: {model_dir}")


@command()
def ppo(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
        resume: bool = ResumeOpt) -> None:
    """PPO with a value model, the `ppo` section and the `rewards` list."""
    cfg = _load(config, overrides)
    model_dir = run_ppo(cfg, base_model(cfg, cfg.ppo.output_dir), progress, resume)
    typer.echo(f"model: {model_dir}")


@command()
def sample(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt) -> None:
    """Rejection sampling: k completions per prompt, kept if they pass the verifiers; an SFT set."""
    cfg = _load(config, overrides)
    data_path = run_sample(cfg, base_model(cfg, cfg.sample.output_dir), progress)
    typer.echo(f"sft set: {data_path}")


@command()
def rm(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
       resume: bool = ResumeOpt) -> None:
    """Train a Bradley-Terry reward model on {prompt, chosen, rejected} pairs (the `rm` section)."""
    cfg = _load(config, overrides)
    model_dir = run_rm(cfg, base_model(cfg, cfg.rm.output_dir), progress, resume)
    typer.echo(f"reward model: {model_dir}")


@command(distributed=True)
def pipeline(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
             resume: bool = ResumeOpt) -> None:
    """Run the `pipeline.stages` in order; finished stages are skipped when started again, and
    with --resume an unfinished stage continues from its latest checkpoint."""
    from grpokit.demo import results_table
    from rich.console import Console

    cfg = _load(config, overrides)
    summary = run_pipeline(cfg, progress, resume=resume)
    if not ranks().is_main:
        return
    Console().print(results_table(summary["stages"]))
    typer.echo(f"summary: {Path(cfg.pipeline.output_dir) / 'summary.json'}")


@command()
def report(run_dir: Path = typer.Argument(..., help="A run directory (one stage or a pipeline/demo)."),
           out: Path = typer.Option(None, help="Where to write the page (default RUN_DIR/report.html).")) -> None:
    """PNG plots and one self-contained HTML page: metrics, held-out results, alerts, config."""
    from grpokit.monitoring.report import write_report

    try:
        typer.echo(f"report: {write_report(run_dir, out)}")
    except ValueError as error:
        typer.secho(f"report: {error}", fg="red", err=True)
        raise typer.Exit(2) from None


@command("eval")
def evaluate(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt) -> None:
    """pass@1, pass@k, maj@k, greedy accuracy and format rate of `model` on held-out problems."""
    cfg = _load(config, overrides)
    metrics = run_eval(cfg, base_model(cfg, cfg.eval.output_dir), cfg.eval.output_dir, progress)
    for key, value in metrics.items():
        typer.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    app()
