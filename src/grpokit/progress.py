"""Progress of long work (training steps, evaluation, sampling) that a person or a log file can read.

On a terminal it is a rich bar with elapsed and remaining time. When output goes to a file, a pipe
or CI, a bar would print once at the end, so a plain line is printed instead every ``every``
units of progress and at the end::

    grpo 10/100  reward 0.523 kl 0.0012  1.62 s/step  elapsed 0:00:16  eta 0:02:25
"""

from __future__ import annotations

import datetime
import time

from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def clock(seconds: float) -> str:
    """``h:mm:ss``.

    >>> clock(3725.4), clock(9.6)
    ('1:02:05', '0:00:10')
    """
    return str(datetime.timedelta(seconds=round(seconds)))


def progress_line(description: str, done: int, total: int, status: str, unit: str,
                  seconds_per_unit: float | None, elapsed: float) -> str:
    """One line of progress for a log.

    >>> progress_line("grpo", 10, 100, "reward 0.523", "step", 1.62, 16.2)
    'grpo 10/100  reward 0.523  1.62 s/step  elapsed 0:00:16  eta 0:02:26'
    """
    parts = [f"{description} {done}/{total}"] + ([status] if status else [])
    if seconds_per_unit is not None:
        parts += [f"{seconds_per_unit:.3g} s/{unit}", f"elapsed {clock(elapsed)}",
                  f"eta {clock(seconds_per_unit * max(total - done, 0))}"]
    return "  ".join(parts)


class ProgressReport:
    """One task's progress (a context manager): ``update(completed=..., advance=..., status=...)``
    and ``print(message)``, which prints above the bar (even when ``disable``).

    ``every`` (default: a tenth of ``total``) is how often a line is printed when the output is
    not a terminal; ``disable`` prints nothing at all.
    """

    def __init__(self, description: str, total: int, completed: int = 0, status: str = "",
                 disable: bool = False, every: int | None = None, unit: str = "step",
                 console: Console | None = None):
        self.description, self.total, self.completed, self.status = description, total, completed, status
        self.disable, self.unit = disable, unit
        self.console = console or get_console()
        self.every = every or max(1, total // 10)
        self._first, self._started, self._last_line = completed, time.perf_counter(), completed
        self._bar = None
        if not disable and self.console.is_terminal:
            self._bar = Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                 console=self.console, transient=False)
            self._task = self._bar.add_task(description, total=total, completed=completed, status=status)

    def __enter__(self) -> ProgressReport:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif not self.disable and exc[0] is None and self.completed != self._last_line:
            self._print_line()

    def update(self, completed: int | None = None, advance: int = 0, status: str | None = None) -> None:
        self.completed = (self.completed if completed is None else completed) + advance
        self.status = self.status if status is None else status
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, status=self.status)
        elif not self.disable and (self.completed - self._last_line >= self.every or self.completed >= self.total):
            self._print_line()

    def print(self, message: str) -> None:
        """Print a message above the bar (also when the progress display is disabled)."""
        self.console.print(message, soft_wrap=True, highlight=False)

    def _print_line(self) -> None:
        done, elapsed = self.completed - self._first, time.perf_counter() - self._started
        per_unit = elapsed / done if done > 0 else None
        self.console.print(progress_line(self.description, self.completed, self.total, self.status,
                                         self.unit, per_unit, elapsed), soft_wrap=True, highlight=False)
        self._last_line = self.completed
