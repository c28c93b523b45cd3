"""Asynchronous rollouts (``rollout.max_staleness: k``): a thread samples the batches of the
next steps while the trainer updates on the current one.

The batch of step s is sampled by the policy of step v(s) = max(0, s - k), exactly: the
producer waits until the trainer has published that version's weights, loads them into the
engine and samples. So k = 0 is the synchronous loop, and with k = 1 the batch of step s + 1 is
sampled while step s trains. The version is fixed by the step, not by timing, so a run is
reproducible and its staleness is min(s, k) at step s; the trainer's importance-sampling
correction (``tis_cap``) accounts for the lag.

Exact resume: a checkpoint saves the batches sampled ahead of it (their rows, by index, with
their versions) along with the prompt stream and the generator as the producer left them.
Saving rather than re-sampling is the choice here because a batch of step s + 1 needs the
weights of step s + 1 - k, which the checkpoint at step s + 1 no longer holds. Before saving,
the producer is held at a step boundary once it has sampled every batch that needs an older
policy than the checkpoint's (through step s + k - 1 for the checkpoint after step s; it may
also have sampled step s + k, which uses the checkpoint's own weights), so either way the saved
state resumes exactly.

A run that starts asynchronous rollouts from a checkpoint without those batches (a synchronous
run's, or one resumed with a larger ``max_staleness``) samples the missing steps with the
checkpoint's weights, the oldest it has, and says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from grpokit.sampling.sampler import Rollout


@dataclass
class SampledBatch:
    """One step's rows and rollout, sampled ahead by the policy of ``policy_version``."""

    step: int
    policy_version: int
    rows: list[dict]
    rollout: Rollout
    seconds: float  # the sampling's own time

    def state_dict(self) -> dict:
        """Tensors and plain numbers only (checkpoints load with ``weights_only``): the rows
        by their index in the dataset."""
        rollout = {f.name: getattr(self.rollout, f.name) for f in fields(Rollout)}
        return {"step": self.step, "policy_version": self.policy_version,
                "row_indices": [row["_index"] for row in self.rows], "rollout": rollout, "seconds": self.seconds}

    @classmethod
    def from_state_dict(cls, state: dict, rows: list[dict]) -> "SampledBatch":
        """The batch of ``state``, its rows taken from the dataset ``rows``."""
        picked = [{**rows[i], "_index": i} for i in state["row_indices"]]
        return cls(state["step"], state["policy_version"], picked, Rollout(**state["rollout"]), state["seconds"])


def policy_version(step: int, max_staleness: int) -> int:
    """The policy version that samples the batch of ``step``.

    >>> [policy_version(s, 1) for s in range(4)], [policy_version(s, 2) for s in range(4)]
    ([0, 0, 1, 2], [0, 0, 0, 1])
    """
    return max(0, step - max_staleness)


class AsyncRollouts:
    """The producer thread (see the module docstring).

    ``sample_rows(step) -> (rows, rollout)`` draws and samples one step's batch with the engine
    as it stands; ``load(weights, version)`` puts a published snapshot into the engine. Batches
    ``first_step`` … ``last_step`` are produced, after the ``sampled`` ones a checkpoint held.
    """

    def __init__(self, sample_rows: Callable[[int], tuple[list[dict], Rollout]],
                 load: Callable[[list, int], None], max_staleness: int, first_step: int, last_step: int,
                 sampled: list[SampledBatch] = ()):
        self.sample_rows, self.load, self.max_staleness = sample_rows, load, max_staleness
        self.first_version, self.last_step = first_step, last_step  # no older weights exist
        self.ready: list[SampledBatch] = list(sampled)
        self.next_step = first_step + len(self.ready)
        self.snapshots: dict[int, list] = {}
        self.loaded_version: int | None = None
        self.limit = last_step  # the producer does not start a step past this
        self.busy, self.stopped, self.error = False, False, None
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._produce, name="grpokit-rollouts", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the trainer's side
    def publish(self, version: int, weights: list) -> None:
        """The policy's weights after ``version`` optimizer steps (a copy the producer may load
        later), unless no batch still to be sampled needs them."""
        with self.changed:
            if self.version_for(self.next_step) <= version <= self.version_for(self.last_step):
                self.snapshots[version] = weights
            self.changed.notify_all()

    def version_for(self, step: int) -> int:
        """The policy version that samples ``step``: :func:`policy_version`, but never older
        than the weights the producer started from."""
        return max(policy_version(step, self.max_staleness), self.first_version)

    def take(self, step: int) -> SampledBatch:
        """The batch of ``step``, waiting for the producer if it is not there yet (a producer
        error is raised only once the batch asked for cannot come)."""
        with self.changed:
            self.changed.wait_for(lambda: self.error is not None or any(b.step == step for b in self.ready))
            batch = next((b for b in self.ready if b.step == step), None)
            if batch is None:
                self._raise()
            self.ready.remove(batch)
            self.changed.notify_all()
            return batch

    def hold(self, through: int) -> list[SampledBatch]:
        """Let the producer finish every step up to ``through`` (or the last), then keep it from
        starting another until :meth:`release`; the batches sampled ahead, for a checkpoint."""
        with self.changed:
            self.limit = min(through, self.last_step)
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.error is not None
                                  or (not self.busy and self.next_step > self.limit))
            self._raise()
            return list(self.ready)

    def release(self) -> None:
        with self.changed:
            self.limit = self.last_step
            self.changed.notify_all()

    def close(self) -> None:
        """Stop the producer after the batch it is sampling, if any."""
        with self.changed:
            self.stopped = True
            self.changed.notify_all()
        self.thread.join()

    # ------------------------------------------------------------------ the producer
    def _produce(self) -> None:
        try:
            while True:
                with self.changed:
                    step = self.next_step
                    version = self.version_for(step)
                    self.changed.wait_for(lambda: self.stopped or (
                        step <= self.limit and (version == self.loaded_version or version in self.snapshots)))
                    if self.stopped:
                        return
                    weights = self.snapshots.pop(version, None)
                    for old in [v for v in self.snapshots if v < version]:
                        del self.snapshots[old]
                    self.busy = True
                if weights is not None:
                    self.load(weights, version)
                    self.loaded_version = version
                started = time.perf_counter()
                rows, rollout = self.sample_rows(step)
                batch = SampledBatch(step, version, rows, rollout, time.perf_counter() - started)
                with self.changed:
                    self.ready.append(batch)
                    self.next_step, self.busy = step + 1, False
                    self.changed.notify_all()
        except BaseException as error:  # noqa: BLE001 - handed to the trainer's thread
            with self.changed:
                self.error, self.busy = error, False
                self.changed.notify_all()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def staleness_metrics(batch: SampledBatch) -> dict[str, float]:
    """How old the step's samples are, in optimizer steps.

    >>> staleness_metrics(SampledBatch(5, 4, [], None, 0.5))
    {'rollout/policy_version': 4.0, 'rollout/staleness': 1.0}
    """
    return {"rollout/policy_version": float(batch.policy_version),
            "rollout/staleness": float(batch.step - batch.policy_version)}

