"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, say how to resume.

The first SIGINT or SIGTERM only sets a flag that the training loop reads at the next step
boundary (so a step is never left half done and the checkpoint is exact); a second one stops at
once (``KeyboardInterrupt``). Under torchrun, SIGTERM keeps its meaning there (torchrun ending
every process because one failed: ``grpokit.parallel.ranks.raise_on_sigterm``), so only a single
process installs these handlers, and a signal the process ignores (``nohup``, a shell's
background job) stays ignored.
"""

from __future__ import annotations

import signal
import threading

from rich import get_console

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopAtStepBoundary:
    """A context manager; ``received`` names the first signal that arrived (None until then).

    >>> with StopAtStepBoundary() as stop:
    ...     signal.raise_signal(signal.SIGTERM)
    ...     stop.received
    SIGTERM: stopping after this step and saving a checkpoint (press Ctrl-C again to stop at once, without one)
    'SIGTERM'
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopAtStepBoundary:
        if self.enabled:
            for number in SIGNALS:
                if signal.getsignal(number) is not signal.SIG_IGN:  # e.g. a job started with nohup or &
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.received is not None:  # the second one: stop now
            self.__exit__()
            raise KeyboardInterrupt(name)
        self.received = name
        get_console().print(f"[bold yellow]{name}[/]: stopping after this step and saving a checkpoint "
                            f"(press Ctrl-C again to stop at once, without one)", highlight=False,
                            soft_wrap=True)
