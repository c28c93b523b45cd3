"""Held-out pass@1 and format rate against training seconds, for one or more pipeline runs whose
GRPO stage evaluated periodically (``monitor.eval_steps``, ``eval_on_start``). The SFT stage's
seconds come first, so the x axis is the whole training time (evaluations not counted).

    python scripts/plot_learning_curves.py runs/smollm2-chain-sum runs/smollm2-chain-sum-lora \\
        --labels "full fine-tuning" LoRA --out docs/smollm2_chain_sum.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grpokit.monitoring.plots import training_seconds


def curve(run: Path, metric: str) -> tuple[list[float], list[float]]:
    """(seconds, values) of ``metric``: the base model at 0, then the grpo stage's periodic
    evaluations, offset by the SFT stage's seconds."""
    offset = json.loads((run / "sft" / "summary.json").read_text())["seconds"] if (run / "sft").is_dir() else 0.0
    rows = [json.loads(line) for line in (run / "grpo" / "metrics.jsonl").read_text().splitlines()]
    clock = training_seconds(rows)
    points = [(offset + clock[row["step"]], row[metric]) for row in rows if row.get(metric) is not None]
    stages = json.loads((run / "summary.json").read_text())["stages"]
    base = next((s["eval"] for s in stages if s["name"] == "base" and s.get("eval")), None)
    if base is not None:  # the starting model, before any training
        points.insert(0, (0.0, base[metric.removeprefix("eval/")]))
    return [p[0] for p in points], [p[1] for p in points]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    figure = Figure(figsize=(7.2, 4.0), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    for index, (run, label) in enumerate(zip(args.runs, labels)):
        for metric, style in (("eval/pass@1", "-o"), ("eval/format_rate", ":s")):
            seconds, values = curve(run, metric)
            ax.plot([s / 60 for s in seconds], values, style, color=f"C{index}", linewidth=1.4, markersize=4,
                    label=f"{label}: {metric.removeprefix('eval/')}")
    ax.set(xlabel="training minutes (SFT, then GRPO; evaluations not counted)", ylabel="held-out fraction",
           ylim=(-0.02, 1.02), title="SmolLM2-135M-Instruct on reasoning-gym chain_sum, 2-core CPU")
    ax.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
