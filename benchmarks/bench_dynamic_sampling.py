"""DAPO dynamic sampling on the demo's GRPO stage: held-out pass@1 against GRPO wall time.

Each variant trains the demo's stage-2 GRPO (the packaged demo recipe: digit sums on the
embedded default, 16 prompts × G = 8, rewards format + correctness) from the same SFT model, with
``grpo.dynamic_sampling`` off, ``drop`` (train only on groups whose rewards differ) and
``refill`` (draw more prompts, up to ``max_sampling_rounds``, until 16 such groups). Held-out
pass@1 is measured every ``--eval-steps`` steps on the demo's 200 test problems; the GRPO time is
the sum of the steps' own times (evaluation excluded).

Reported per variant: pass@1 before and after, the gain per GRPO minute, the steps' mean share of
groups with signal, prompts drawn per step, and the curve as a PNG.

Run (after ``grpokit demo``, whose stage-1 model it starts from)::

    python benchmarks/bench_dynamic_sampling.py --demo-dir runs/demo --out benchmarks/results/dynamic_sampling.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = ("off", "drop", "refill")


def run_variant(mode: str, demo_dir: Path, out_dir: Path, steps: int, eval_steps: int) -> list[dict]:
    """Train one variant in its own process; return its metrics.jsonl records."""
    from grpokit.recipes.demo import demo_config

    sft_model = json.loads((demo_dir / "pipeline_state.json").read_text())["sft"]["output"]
    config = out_dir / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    demo = demo_config(demo_dir)
    demo.model = sft_model
    config.write_text(json.dumps(demo.model_dump(mode="json")))  # JSON is YAML
    run_dir = out_dir / mode
    command = [sys.executable, "-m", "grpokit", "train", str(config), f"grpo.output_dir={run_dir}",
               f"grpo.dynamic_sampling={mode}", f"grpo.max_steps={steps}",
               f"grpo.monitor.eval_steps={eval_steps}", "grpo.monitor.eval_on_start=true",
               "grpo.monitor.eval_num_problems=200", "grpo.save_steps=0", "--no-progress"]
    subprocess.run(command, check=True)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summarise(mode: str, records: list[dict]) -> dict:
    """The pass@1 curve against cumulative GRPO seconds, and the sampling figures."""
    seconds, curve, kept, drawn = 0.0, [], [], []
    for record in records:
        seconds += record.get("time/step", 0.0)
        if "eval/pass@1" in record:
            curve.append((seconds, record["eval/pass@1"]))
        if "sampling/groups_kept" in record:
            kept.append(record["sampling/groups_kept"])
            drawn.append(record["sampling/prompts_drawn"])
    (t0, start), (t1, end) = curve[0], curve[-1]
    return {"variant": mode, "curve": curve, "pass@1_start": start, "pass@1_end": end, "grpo_seconds": t1,
            "gain_per_minute": (end - start) / ((t1 - t0) / 60), "mean_groups_kept": sum(kept) / len(kept),
            "mean_prompts_drawn": sum(drawn) / len(drawn)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in results:
        ax.plot([t / 60 for t, _ in r["curve"]], [p for _, p in r["curve"]], marker="o", label=r["variant"])
    ax.set_xlabel("GRPO wall time (min, evaluation excluded)")
    ax.set_ylabel("held-out pass@1")
    ax.set_title("dynamic_sampling on the demo's GRPO stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(results: list[dict]) -> str:
    rows = ["| dynamic_sampling | pass@1 start | pass@1 end | GRPO s | pass@1 gain / min | groups kept / step | "
            "prompts drawn / step |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['variant']} | {r['pass@1_start']:.3f} | {r['pass@1_end']:.3f} | {r['grpo_seconds']:.0f} | "
             f"{r['gain_per_minute']:.3f} | {r['mean_groups_kept']:.1f} | {r['mean_prompts_drawn']:.1f} |"
             for r in results]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_dynamic_sampling"))
    parser.add_argument("--steps", type=int, default=100, help="GRPO steps per variant (the demo's 100)")
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dynamic_sampling.json")
    args = parser.parse_args()
    results = [summarise(mode, run_variant(mode, args.demo_dir, args.work_dir, args.steps, args.eval_steps))
               for mode in args.variants.split(",")]
    table = markdown(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.out.with_suffix(".png"))
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results, "table": table}, indent=2))


if __name__ == "__main__":
    main()
