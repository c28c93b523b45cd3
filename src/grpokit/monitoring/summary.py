"""``summary.json``: the machine-readable result of a run or stage, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_summary(output_dir: str | Path, summary: dict) -> Path:
    """Write ``summary.json`` atomically (temp file + rename)."""
    target = Path(output_dir) / "summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, target)
    return target
