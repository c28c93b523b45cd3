"""The loop every trainer shares: steps and their metrics, checkpoints that resume exactly,
skipped non-finite updates, stop requests and rollbacks.

A trainer subclasses :class:`TrainingLoop`, calls :meth:`~TrainingLoop.init_loop` at the end of
``__init__``, builds ``optimizer`` and ``scheduler`` in ``train`` before
:meth:`~TrainingLoop.run_loop`, and provides ``args`` (an ``OptimConfig``), ``model``,
``tokenizer`` and

- ``step() -> dict``: one step; it advances ``step_index`` and returns
  ``self.end_step(batch, metrics, problem)``, ``problem`` saying what was NaN/Inf (or None);
- ``status(metrics) -> str``: the progress bar's text;
- optionally ``checkpoint_models()`` (models besides ``model`` that training changes),
  ``generators()`` (the torch generators it samples with) and ``trainer_state()`` /
  ``load_trainer_state(state)`` (its data position).

Callbacks are objects with an optional ``on_step_end(trainer, step, batch, metrics)`` (and
``on_train_begin(trainer, metrics)``, before the first step, logged as step 0); keys they add to
``metrics`` are logged, and they may call :meth:`~TrainingLoop.request_stop` or
:meth:`~TrainingLoop.rollback`. A callback with ``state_dict()`` / ``load_state_dict(state)``
has that state saved in checkpoints (tensors, numbers, strings, lists and dicts only).

Under torchrun every rank runs this loop in step: ``engine`` (``grpokit.parallel.training_engine``) is the
model's DDP/FSDP2 wrapping, checkpoints are gathered to and written by rank 0 (the others wait),
every rank resumes from them, and metrics are written by rank 0 only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grpokit.errors import CheckpointError, ConfigError, NonFiniteError, TrainingInterrupted
from grpokit.trainers.checkpoints import (
    complete_checkpoints,
    latest_valid_checkpoint,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
    rng_state,
    truncate_jsonl,
    write_checkpoint,
)
from grpokit.parallel.ranks import any_across, barrier, ranks
from grpokit.parallel.training_engine import Engine
from grpokit.config import write_resolved
from grpokit.models import save_model
from grpokit.monitoring import MetricsWriter
from grpokit.progress import ProgressReport
from grpokit.models.for_training import final_model
from grpokit.monitoring.summary import write_summary
from grpokit.trainers.interrupts import StopAtStepBoundary
from grpokit.trainers.optim import scale_learning_rate

logger = logging.getLogger("grpokit")


@dataclass
class NonFiniteSteps:
    """Steps whose update was skipped because the loss or the gradient norm was NaN/Inf.

    >>> steps = NonFiniteSteps(limit=2)
    >>> [steps.observe(4, "loss is nan"), steps.observe(5, None), steps.observe(6, "loss is nan")]
    [{'nonfinite/skipped_steps': 1}, {'nonfinite/skipped_steps': 1}, {'nonfinite/skipped_steps': 2}]
    >>> steps.exhausted, steps.observe(7, "gradient norm is inf"), steps.exhausted
    (False, {'nonfinite/skipped_steps': 3}, True)
    >>> steps.describe()
    'step 6: loss is nan; step 7: gradient norm is inf'
    """

    limit: int
    skipped: int = 0
    streak: list[list] = field(default_factory=list)  # [step, problem] of the bad steps in a row

    def observe(self, step: int, problem: str | None) -> dict[str, float]:
        """Count one step; return the metric logged with it."""
        if problem is None:
            self.streak = []
        else:
            self.skipped += 1
            self.streak.append([step, problem])
        return {"nonfinite/skipped_steps": self.skipped}

    @property
    def exhausted(self) -> bool:
        return len(self.streak) >= self.limit

    def describe(self) -> str:
        return "; ".join(f"step {step}: {problem}" for step, problem in self.streak)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.streak = state["skipped"], [list(s) for s in state["streak"]]


class SilentWriter:
    """The metrics writer of ranks other than 0: they write nothing."""

    def write(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingLoop:
    """Steps, metrics, checkpoints, resume, non-finite steps, stop requests and rollbacks."""

    stage = "train"  # names the run in messages and the progress bar
    distributable = True  # whether it can run as several processes under torchrun

    def init_loop(self, callbacks=None) -> None:
        self.ranks = ranks()
        if self.ranks.enabled and not self.distributable:
            raise ConfigError(f"{self.stage} trains on one process; launch it without torchrun "
                             f"(this run has {self.ranks.world_size} processes)")
        self.engine = Engine(self.model, self.ranks, self.args.distributed)
        self.callbacks = list(callbacks or [])
        self.step_index = 0
        self.history: list[dict[str, float]] = []  # every step's numeric metrics
        self.nonfinite = NonFiniteSteps(self.args.max_consecutive_nonfinite)
        self.stop_reason: str | None = None
        self.rollbacks: list[dict] = []
        self.lr_scale = 1.0  # the product of the rollbacks' learning-rate factors
        self.writer: MetricsWriter | None = None  # open while train() runs
        self._rolled_back = False
        self._saved_step: int | None = None

    # ------------------------------------------------------------ what a trainer may extend
    def checkpoint_models(self) -> dict:
        """Models besides ``model`` whose weights training changes, by checkpoint subdirectory."""
        return {}

    def generators(self) -> dict[str, torch.Generator]:
        """The torch generators the trainer draws from (their states are checkpointed)."""
        return {}

    def trainer_state(self) -> dict:
        """The trainer's own state (its data position) for checkpoints."""
        return {}

    def load_trainer_state(self, state: dict) -> None:
        """Continue from what :meth:`trainer_state` returned."""

    # ------------------------------------------------------------------------ the loop
    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    def run_loop(self, title: str, show_progress: bool, resume_from_checkpoint=None) -> float:
        """Take steps until ``max_steps`` or a stop request; return the seconds it took.

        ``resume_from_checkpoint``: True (the latest checkpoint of ``output_dir``), a checkpoint
        path, or None; the run files (metrics.jsonl, alerts.jsonl, completions.jsonl) are then
        cut back to the checkpoint's step. SIGINT or SIGTERM ends the loop at the next step
        boundary with a checkpoint and :class:`~grpokit.errors.TrainingInterrupted`.
        """
        checkpoint = resolve_resume(resume_from_checkpoint, self.output_dir)
        if checkpoint is not None:
            self.restore(checkpoint)
        else:
            self.set_aside_earlier_run()
        self.writer = self.open_writer(resume=checkpoint is not None)
        started = time.perf_counter()
        try:
            with StopAtStepBoundary(enabled=not self.ranks.enabled) as signals, \
                    ProgressReport(title, self.args.max_steps, self.step_index, every=self.args.logging_steps,
                                   disable=not show_progress or not self.ranks.is_main) as bar:
                if checkpoint is not None and self.ranks.is_main:
                    bar.print(f"resumed {self.stage} from {checkpoint} (step {self.step_index})")
                if self.step_index == 0:
                    self.begin_training()
                while (self.step_index < self.args.max_steps and self.stop_reason is None
                       and signals.received is None):
                    self._rolled_back = False
                    metrics = self.step()
                    if not self._rolled_back:  # after a rollback the step never happened
                        self.record(metrics)
                    bar.update(completed=self.step_index, status=self.status(metrics))
        finally:
            self.writer.close()
            self.writer = None
        if signals.received is not None:
            raise TrainingInterrupted(self.stage, self.step_index, self.args.max_steps,
                                      self.save_checkpoint(), signals.received)
        if self.stop_reason is not None:
            self.save_checkpoint()
        return time.perf_counter() - started

    def set_aside_earlier_run(self) -> None:
        """A fresh start in a directory that holds an earlier run's checkpoints moves them to
        ``earlier-run-<time>/``, so a later resume never mixes the two runs."""
        earlier = complete_checkpoints(self.output_dir)
        if earlier and self.ranks.is_main:
            target = self.output_dir / time.strftime("earlier-run-%Y%m%d-%H%M%S")
            target.mkdir()
            for path in earlier:
                path.rename(target / path.name)
            logger.warning("%s held checkpoints of an earlier run (%s); this run starts afresh, so they were "
                           "moved to %s (start with --resume / resume_from_checkpoint=True to continue that "
                           "run instead; delete the directory when you no longer need it)", self.output_dir,
                           ", ".join(p.name for p in earlier), target)
        barrier()

    def open_writer(self, resume: bool):
        if not self.ranks.is_main:
            return SilentWriter()
        return MetricsWriter.from_args(self.args, resume, self.step_index if resume else None)

    def run_files(self) -> list[str]:
        """The per-step JSON-lines files of the run (metrics.jsonl and the callbacks'), all cut
        back to the checkpoint on resume and rollback, so that they equal an uninterrupted run's."""
        return ["metrics.jsonl", *(name for c in self.callbacks for name in getattr(c, "run_files", ()))]

    def begin_training(self) -> None:
        """Callbacks' ``on_train_begin(trainer, metrics)`` before the first step; what they add is
        logged as step 0 (a starting evaluation, say)."""
        metrics: dict[str, float] = {}
        for callback in self.callbacks:
            if hasattr(callback, "on_train_begin"):
                callback.on_train_begin(self, metrics)
        if metrics:
            self.writer.write(0, metrics)

    def end_step(self, batch, metrics: dict[str, float], problem: str | None) -> dict[str, float]:
        """Count a skipped (non-finite) update, then run the callbacks; return the metrics."""
        metrics.update(self.nonfinite.observe(self.step_index, problem))
        if problem is not None:
            logger.warning("%s step %d: %s; the update was skipped (%d skipped so far)",
                           self.stage, self.step_index, problem, self.nonfinite.skipped)
        for callback in self.callbacks:
            if hasattr(callback, "on_step_end"):
                callback.on_step_end(self, self.step_index, batch, metrics)
            if self._rolled_back:
                break
        return metrics

    def record(self, metrics: dict[str, float]) -> None:
        """Log a finished step; stop on too many non-finite steps; save every ``save_steps``."""
        self.writer.write(self.step_index, metrics)
        self.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if self.nonfinite.exhausted:
            self.stop_nonfinite()
        if self.args.save_steps and self.step_index % self.args.save_steps == 0:
            self.save_checkpoint()

    def save_final_model(self, directory: Path) -> Path:
        """Merge LoRA adapters, then write the model (rank 0; under FSDP2 gathered from every
        rank) as a ``save_pretrained`` directory."""
        self.model = final_model(self.model)
        weights = self.engine.full_state_dict()
        if self.ranks.is_main:
            save_model(self.model, self.tokenizer, directory, weights)
        barrier()
        return directory

    def write_run_files(self, summary: dict | None = None) -> None:
        """The resolved config (at the start) or summary.json (at the end), by rank 0."""
        if not self.ranks.is_main:
            return
        if summary is None:
            write_resolved(self.args, self.output_dir)
        else:
            write_summary(self.output_dir, summary)

    def loop_summary(self) -> dict:
        """What summary.json gets from the loop: a stop request, rollbacks, skipped steps."""
        summary = {}
        if self.stop_reason is not None:
            summary["stopped_early"] = self.stop_reason
        if self.rollbacks:
            summary["rollbacks"] = self.rollbacks
        if self.nonfinite.skipped:
            summary["nonfinite_skipped_steps"] = self.nonfinite.skipped
        return summary

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step_index>`` (once per step); weights holding NaN/Inf are never
        saved (None is returned), so resume and rollback always find good ones."""
        path = self.output_dir / f"checkpoint-{self.step_index}"
        if self._saved_step == self.step_index:
            return path
        if not self.weights_finite():
            logger.warning("%s step %d: the weights hold NaN/Inf; no checkpoint saved", self.stage,
                           self.step_index)
            return None
        weights, state = self.engine.full_state_dict(), self.checkpoint_state()  # collectives
        if self.ranks.is_main:
            write_checkpoint(self.output_dir, self.step_index, self.model, self.tokenizer, state,
                             self.checkpoint_models(), self.args.save_total_limit, weights)
        barrier()  # the checkpoint exists for every rank from here on
        self._saved_step = self.step_index
        return path

    def weights_finite(self) -> bool:
        """No NaN/Inf in any weight (of any rank's shard)."""
        models = [self.model, *self.checkpoint_models().values()]
        local = all(bool(torch.isfinite(_local(p)).all()) for model in models for p in model.parameters())
        return not any_across(not local)

    def checkpoint_state(self) -> dict:
        return {
            "step": self.step_index, "history": self.history,
            "optimizer": self.engine.optimizer_state(self.optimizer), "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generators()), "trainer": self.trainer_state(),
            "nonfinite": self.nonfinite.state_dict(), "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "callbacks": [c.state_dict() if hasattr(c, "state_dict") else None for c in self.callbacks],
        }

    def restore(self, checkpoint: Path, keep: tuple[str, ...] = ()) -> None:
        """Continue from ``checkpoint`` exactly: weights, optimizer, schedule, RNG, data position,
        counters and history; the run files except those in ``keep`` are cut back to its step."""
        state = load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler,
                                self.checkpoint_models(), self.engine)
        self.step_index, self.history = state["step"], state["history"]
        self.nonfinite.load_state_dict(state["nonfinite"])
        self.lr_scale, self.rollbacks = state["lr_scale"], state["rollbacks"]
        self.load_trainer_state(state["trainer"])
        for callback, saved in zip(self.callbacks, state["callbacks"]):
            if saved is not None and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(saved)
        restore_rng_state(state["rng"], self.generators())
        if self.ranks.is_main:
            for name in (n for n in self.run_files() if n not in keep):
                truncate_jsonl(self.output_dir / name, self.step_index)
        self._saved_step = self.step_index

    # ---------------------------------------------------------------- control API
    def request_stop(self, reason: str) -> None:
        """End training after the current step: a checkpoint is saved, then the final model, and
        summary.json records ``stopped_early: reason``."""
        self.stop_reason = reason
        logger.warning("%s: stop requested at step %d: %s", self.stage, self.step_index, reason)

    def rollback(self, lr_factor: float) -> int:
        """Reload the latest complete checkpoint up to the current step (weights, optimizer,
        schedule, RNG, data position) and multiply the learning rate by ``lr_factor``; return the
        step rolled back to.

        Factors compound: a second rollback to the same checkpoint trains with the product of
        both, so a run that diverged does not repeat itself. metrics.jsonl is cut back to the
        checkpoint's step, and summary.json lists the rollbacks.
        """
        if self.writer is None:
            raise RuntimeError("rollback() works while train() runs, e.g. from a callback's on_step_end")
        if not lr_factor > 0:
            raise ValueError(f"rollback: lr_factor must be > 0, got {lr_factor}")
        checkpoint = latest_valid_checkpoint(self.output_dir, max_step=self.step_index)
        if checkpoint is None:
            raise CheckpointError(f"rollback at {self.stage} step {self.step_index}: {self.output_dir} holds "
                                  f"no complete checkpoint to roll back to; set save_steps")
        from_step, scale, rollbacks = self.step_index, self.lr_scale * lr_factor, self.rollbacks
        self.writer.close()
        self.restore(checkpoint, keep=("alerts.jsonl",))  # the alert that asked for it happened
        scale_learning_rate(self.optimizer, self.scheduler, scale / self.lr_scale)
        self.lr_scale = scale
        self.rollbacks = [*rollbacks, {"step": from_step, "to_step": self.step_index, "lr_factor": lr_factor}]
        self.writer = self.open_writer(resume=True)
        self._rolled_back = True
        logger.warning("%s: rolled back from step %d to %s, learning rate x%g", self.stage, from_step,
                       checkpoint, lr_factor)
        return self.step_index

    def stop_nonfinite(self) -> None:
        """Save the last good state (when the weights are still finite) and raise NonFiniteError."""
        if self.weights_finite():
            kept = (f"those updates were skipped, so the weights are the last good ones; they are "
                    f"saved with the optimizer and data position in {self.save_checkpoint()}")
        else:
            latest = latest_valid_checkpoint(self.output_dir, max_step=self.step_index)
            kept = (f"the weights themselves hold NaN/Inf, so nothing was saved; the latest good "
                    f"checkpoint is {latest or 'none'}")
        raise NonFiniteError(
            f"{self.stage} stopped at step {self.step_index} after {len(self.nonfinite.streak)} non-finite "
            f"steps in a row (max_consecutive_nonfinite={self.args.max_consecutive_nonfinite}): "
            f"{self.nonfinite.describe()}; {kept}. Lower the learning rate or check the data and "
            f"rewards, then resume (--resume)")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's own part on this rank (a sharded DTensor's local shard)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
