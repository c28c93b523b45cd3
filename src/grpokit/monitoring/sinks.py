"""Where per-step metrics go: ``metrics.jsonl`` always, TensorBoard on request, a rich bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsWriter:
    """Append one JSON object per step to ``output_dir/metrics.jsonl`` (and TensorBoard)."""

    def __init__(self, output_dir: str | Path, report_to: list[str] = (), resume: bool = False):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if resume else "w")
        self._tensorboard = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def progress_bar(description: str, disable: bool = False) -> Progress:
    """A rich progress bar with a free-text status column (``fields['status']``)."""
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        disable=disable,
        transient=False,
    )
