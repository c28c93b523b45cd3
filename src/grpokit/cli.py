"""``grpokit demo | sft | train | ppo | sample | rm | eval | pipeline | report``: each stage from a
YAML config plus dotted overrides, and the report of a run.

This module imports only typer and grpokit's config and error modules, so ``--help`` and config
errors answer at once; torch, transformers and the trainers are imported inside the commands.
Errors in what the user gave end with one screen and exit code 2 (``--debug`` anywhere on the
command line, or ``GRPOKIT_DEBUG=1``, adds the traceback); Ctrl-C during training saves a
checkpoint at the next step boundary and exits with 130.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path

import typer

from grpokit.errors import GrpokitError, Terminated, TrainingInterrupted

DEBUG_ENV = "GRPOKIT_DEBUG"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="GRPO training for language models. Overrides: key.path=value. "
                       "--debug (anywhere) shows tracebacks.")

ConfigArg = typer.Argument(..., help="A YAML run config (keys: docs/config.md).")
OverridesArg = typer.Argument(None, help="Dotted overrides such as grpo.beta=0.04.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
ResumeOpt = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the output "
                         "directory, exactly (weights, optimizer, RNG, data position); start afresh "
                         "when there is none.")


def main() -> None:
    """The ``grpokit`` entry point: ``--debug`` may come anywhere on the command line."""
    if "--debug" in sys.argv[1:]:
        sys.argv = [arg for arg in sys.argv if arg != "--debug"]
        os.environ[DEBUG_ENV] = "1"
    app()


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of errors too "
                                                                "(also GRPOKIT_DEBUG=1).")) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def launched() -> bool:
    """True in a process that ``torchrun`` started as one of several (read from the environment,
    so that a single process never imports torch.distributed for it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def command(name: str | None = None, distributed: bool = False):
    """``app.command`` whose user errors end the process with their message (exit code 2).

    Only ``distributed`` commands may run as several processes under torchrun; the others
    refuse. Under torchrun each message names its rank.
    """
    def register(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            where = f"rank {os.environ.get('RANK', '?')}: " if launched() else ""
            try:
                if launched():
                    from grpokit.parallel.ranks import raise_on_sigterm

                    raise_on_sigterm()
                    if not distributed:
                        from grpokit.errors import ConfigError

                        raise ConfigError(f"grpokit {name or fn.__name__} runs on one process; launch it "
                                          f"without torchrun (distributed: sft, train, pipeline)")
                return fn(*args, **kwargs)
            except GrpokitError as error:
                fail(f"{where}{type(error).__name__}: {error}", 2)
            except TrainingInterrupted as stop:
                fail(f"{where}{stop}. Continue with: {resume_command()}", 130)
            except KeyboardInterrupt:
                fail(f"{where}interrupted; finished stages and checkpoints are kept. Continue with: "
                     f"{resume_command()}", 130)
            except Terminated:
                fail(f"{where}stopped: torchrun ends every process when one fails (its report names the "
                     f"first failure). Start the same command again with --resume to continue from the "
                     f"latest checkpoint.", 3)
            except Exception as error:
                if not (launched() and lost_contact(error)):
                    raise
                fail(f"{where}lost contact with the other processes (one of them died, or a collective "
                     f"waited longer than distributed_timeout): {error}. Start the same command again "
                     f"with --resume to continue from the latest checkpoint.", 3)
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if "grpokit.parallel.ranks" in sys.modules:
                    sys.modules["grpokit.parallel.ranks"].shutdown()
        return app.command(name)(run)
    return register


def fail(message: str, code: int) -> None:
    """Print ``message`` (after the traceback when debugging) and exit with ``code``."""
    if debugging():
        traceback.print_exc()
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code) from None


def resume_command() -> str:
    """The command line that continues this run: the same one, with ``--resume``."""
    args = [arg for arg in sys.argv[1:] if arg != "--resume"]
    return shlex.join(["grpokit", *args, "--resume"])


def quiet_libraries() -> None:
    """Per-file load/save bars and notices of transformers and datasets off: the stages show
    their own progress (imported here, when a command runs, not for ``--help``)."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # e.g. the "score.weight newly initialized" report of reward models
    datasets.disable_progress_bars()


def lost_contact(error: Exception) -> bool:
    """Whether ``error`` says a collective failed: a dead or silent peer, or a timeout.

    >>> lost_contact(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"))
    True
    >>> lost_contact(RuntimeError("shape mismatch"))
    False
    """
    if type(error).__name__ == "DistError":  # torch.distributed's, without importing it here
        return True
    return isinstance(error, RuntimeError) and any(
        word in str(error) for word in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))


def echo(message: str) -> None:
    """Print a result line (rank 0 only under torchrun)."""
    from grpokit.parallel.ranks import ranks

    if ranks().is_main:
        typer.echo(message)


def _load(config: Path | None, overrides: list[str] | None):
    """The validated run config (before torch is imported), then the libraries quietened."""
    from grpokit.config import load_config

    cfg = load_config(config, overrides or [])
    quiet_libraries()
    return cfg


@command()
def demo(
    output_dir: Path = typer.Option(None, help="Where every stage writes [default: runs/demo, or "
                                    "runs/agent with --recipe agent]."),
    overrides: list[str] = OverridesArg,
    progress: bool = ProgressOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted stage from its latest "
                                "checkpoint (finished stages are always skipped)."),
    recipe: str = typer.Option("r1", help="r1: the DeepSeek-R1 recipe on digit sums; agent: a tool-using "
                               "agent (multiplication with a calculator tool), SFT then multi-turn GRPO."),
) -> None:
    """The R1 recipe on the embedded default (digit sums, harmful requests mixed in): SFT, GRPO,
    a judge, rejection sampling with the served judge, SFT, a harmlessness reward model, GRPO for
    helpfulness and harmlessness; held-out results of every stage. With --recipe agent: a
    tool-using agent, with and without its tool."""
    from grpokit.recipes.demo import demo_config, run_demo

    default_dir = Path("runs/agent" if recipe == "agent" else "runs/demo")
    cfg = demo_config(output_dir or default_dir, overrides or [], recipe)
    quiet_libraries()
    run_demo(cfg, show_progress=progress, resume=resume)


@command(distributed=True)
def sft(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
        resume: bool = ResumeOpt) -> None:
    """Supervised fine-tuning (stage 1) with the `sft` section (torchrun: several processes)."""
    cfg = _load(config, overrides)
    from grpokit.parallel.ranks import main_first, setup
    from grpokit.recipes.stages import base_model, run_sft

    setup(cfg.sft.distributed_timeout)
    model_dir = run_sft(cfg, main_first(lambda: base_model(cfg, cfg.sft.output_dir)), progress, resume)
    echo(f"model: {model_dir}")


@command(distributed=True)
def train(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
          resume: bool = ResumeOpt) -> None:
    """GRPO with the `grpo` section and the `rewards` list (torchrun: several processes)."""
    cfg = _load(config, overrides)
    from grpokit.parallel.ranks import main_first, setup
    from grpokit.recipes.stages import base_model, run_grpo

    setup(cfg.grpo.distributed_timeout)
    model_dir = run_grpo(cfg, main_first(lambda: base_model(cfg, cfg.grpo.output_dir)), progress, resume)
    echo(f"model: {model_dir}")


@command()
def ppo(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
        resume: bool = ResumeOpt) -> None:
    """PPO with a value model, the `ppo` section and the `rewards` list."""
    cfg = _load(config, overrides)
    from grpokit.recipes.stages import base_model, run_ppo

    model_dir = run_ppo(cfg, base_model(cfg, cfg.ppo.output_dir), progress, resume)
    typer.echo(f"model: {model_dir}")


@command()
def sample(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt) -> None:
    """Rejection sampling: k completions per prompt, kept if they pass the verifiers; an SFT set."""
    cfg = _load(config, overrides)
    from grpokit.recipes.stages import base_model, run_sample

    data_path = run_sample(cfg, base_model(cfg, cfg.sample.output_dir), progress)
    typer.echo(f"sft set: {data_path}")


@command()
def rm(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
       resume: bool = ResumeOpt) -> None:
    """Train a Bradley-Terry reward model on {prompt, chosen, rejected} pairs (the `rm` section)."""
    cfg = _load(config, overrides)
    from grpokit.recipes.stages import base_model, run_rm

    model_dir = run_rm(cfg, base_model(cfg, cfg.rm.output_dir), progress, resume)
    typer.echo(f"reward model: {model_dir}")


@command(distributed=True)
def pipeline(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt,
             resume: bool = ResumeOpt) -> None:
    """Run the `pipeline.stages` in order; finished stages are skipped when started again, and
    with --resume an unfinished stage continues from its latest checkpoint."""
    cfg = _load(config, overrides)
    from rich.console import Console

    from grpokit.recipes.demo import results_table
    from grpokit.parallel.ranks import ranks
    from grpokit.recipes.pipeline import run_pipeline

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

    typer.echo(f"report: {write_report(run_dir, out)}")


models_app = typer.Typer(no_args_is_help=True, help="Built-in models and GGUF conversion.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """The model names a config's `model` accepts besides a local directory."""
    from grpokit.models.builtin import BUILTIN_MODELS, EMBEDDED, model_cache_dir

    typer.echo(f"{EMBEDDED}: the 0.8M-parameter Llama with a character tokenizer, created in code per run")
    for name, spec in BUILTIN_MODELS.items():
        converted = model_cache_dir() / "models" / name
        where = f"converted: {converted}" if (converted / "config.json").is_file() else \
            f"converted on first use into {converted}; needs: {spec.install}"
        typer.echo(f"{name}: {spec.summary} ({where})")


@models_app.command("import-gguf")
def models_import_gguf(gguf_file: Path = typer.Argument(..., help="A .gguf model file."),
                       out: Path = typer.Argument(..., help="The save_pretrained directory to write.")) -> None:
    """Convert a GGUF file into a float32 transformers model directory (model, tokenizer, chat
    template) that any `model:` setting can name."""
    try:
        from grpokit.models import import_gguf

        quiet_libraries()
        typer.echo(f"model: {import_gguf(gguf_file, out)}")
    except GrpokitError as error:
        fail(f"{type(error).__name__}: {error}", 2)


@command("eval")
def evaluate(config: Path = ConfigArg, overrides: list[str] = OverridesArg, progress: bool = ProgressOpt) -> None:
    """pass@1, pass@k, maj@k, greedy accuracy and format rate of `model` on held-out problems."""
    cfg = _load(config, overrides)
    from grpokit.recipes.stages import base_model, run_eval

    metrics = run_eval(cfg, base_model(cfg, cfg.eval.output_dir), cfg.eval.output_dir, progress)
    for key, value in metrics.items():
        typer.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    typer.echo(f"wrote: {Path(cfg.eval.output_dir) / 'summary.json'} and samples.jsonl")


@command("serve-rollouts")
def serve_rollouts(
    model: Path = typer.Argument(..., help="The policy's starting model directory (save_pretrained)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for trainers on other machines)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    dtype: str = typer.Option("auto", help="vLLM's weight dtype: auto (float32), float32, bfloat16, float16."),
    gpu_memory_utilization: float = typer.Option(0.9, help="Share of the GPU's memory (on CPU, of RAM) vLLM reserves."),
    max_model_len: int = typer.Option(None, help="Longest prompt + completion (default: the model's)."),
    seed: int = typer.Option(0, help="vLLM's seed (every request also carries its own)."),
) -> None:
    """Serve MODEL with vLLM for trainers with rollout.vllm_mode: server (sampling over HTTP,
    weights pushed after every step)."""
    from grpokit.sampling.rollout_server import serve_rollouts as serve

    serve(str(model), host, port, dtype, gpu_memory_utilization, max_model_len, seed, announce=typer.echo)


if __name__ == "__main__":
    main()
