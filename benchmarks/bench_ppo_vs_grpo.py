"""GRPO against PPO with a value model on the demo task, at the same wall-clock training budget.

Both start from the demo's SFT model (the embedded default after the demo recipe's SFT stage,
trained once and cached in ``benchmarks/.cache/demo-sft-<steps>``) and use the same rewards
(format + correctness), learning rate, completion length and completions per step (GRPO: 16
prompts × G = 8; PPO: 128 prompts × 1). GRPO runs the demo recipe's ``grpo`` section as is
(beta 0: it holds the policy alone; ``--grpo-beta`` adds the reference); PPO runs TRL's
defaults (4 PPO epochs, kl_coef 0.05, vf_coef 0.1, γ 1, λ 0.95, whitened advantages;
``--ppo-epochs``, ``--ppo-kl-coef``), so it holds policy, value model and reference. Rewards
are rules, so neither holds a reward model.

**Budget: the same training wall-clock seconds.** Each method runs in its own subprocess and
takes steps until its training clock (the sum of whole-step times; snapshots and evaluation
are outside it) reaches ``--budget``; at ``--points`` evenly spaced times it saves the policy.
After training the worker records its peak RSS, then evaluates every snapshot on the held-out
problems (``grpokit.evaluation.evaluate.evaluate``: pass@1 from k samples at T = 1, greedy accuracy).

Reported per method: peak RSS of the training process, the same above the process's memory
after imports, model-state bytes (weights of every held model + gradients + AdamW state),
models held, seconds per step (median), completion tokens sampled, and held-out pass@1 against
training time. Written to ``benchmarks/results/ppo_vs_grpo.json`` and ``.png``.

The issue's targets: GRPO peak memory ≤ 0.6 × PPO's, and GRPO at least PPO's accuracy in the
same wall time. Peak RSS includes the interpreter and libraries (about 550 MB after imports
on CPU), which the above-baseline column removes; with the 0.8M-parameter demo model the
weights are small and PPO's extra memory is mostly activations (its policy and value graphs
are alive together in each micro-batch), while the model-state column is the part that
scales with model size (16Ψ bytes per trained model in fp32 AdamW, 4Ψ per frozen one).

    python benchmarks/bench_ppo_vs_grpo.py                       # 300 s each, 6 points
    python benchmarks/bench_ppo_vs_grpo.py --budget 60 --points 3 --eval-problems 100 \\
        --eval-samples 4 --sft-steps 300                          # a quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
CACHE = HERE / ".cache"
METHODS = ("grpo", "ppo")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_config(sft_steps: int):
    """The demo recipe with SFT cached by step count and stage outputs under the cache."""
    from grpokit.recipes.demo import demo_config

    out = CACHE / f"demo-sft-{sft_steps}"
    return demo_config(out, [f"sft.max_steps={sft_steps}", f"sft.output_dir={out / 'sft'}"])


def sft_model(sft_steps: int) -> Path:
    """The demo's SFT model, trained on first use and cached."""
    from grpokit.recipes.stages import base_model, run_sft

    cfg = run_config(sft_steps)
    model_dir = Path(cfg.sft.output_dir) / "model"
    if not (model_dir / "config.json").is_file():
        run_sft(cfg, base_model(cfg, Path(cfg.sft.output_dir).parent), show_progress=False)
    return model_dir


def eval_config(problems: int, samples: int):
    from grpokit.config import EvalConfig

    return EvalConfig(num_problems=problems, num_samples=samples, max_completion_length=64)


def evaluate_dir(model_dir: Path, sft_steps: int, problems: int, samples: int) -> dict:
    """Held-out metrics of the policy saved in ``model_dir``."""
    from grpokit.evaluation.evaluate import evaluate
    from grpokit.models import load_model, load_tokenizer
    from grpokit.recipes.stages import test_rows

    rows = test_rows(run_config(sft_steps))
    return evaluate(load_model(model_dir), load_tokenizer(model_dir), rows,
                    eval_config(problems, samples), show_progress=False)


def make_trainer(method: str, model_dir: Path, sft_steps: int, out: str, grpo_beta: float,
                 ppo_kl_coef: float, ppo_epochs: int):
    """The method's trainer on the demo task, its optimizer built (``train()`` is not used)."""
    from grpokit.recipes.stages import train_rows
    from grpokit.trainers.grpo import GRPOTrainer
    from grpokit.trainers.optim import build_optimizer
    from grpokit.config import PPOConfig
    from grpokit.trainers.ppo import PPOTrainer

    cfg = run_config(sft_steps)
    grpo = cfg.grpo.model_copy(update={"output_dir": out, "max_steps": 100_000, "beta": grpo_beta})
    rows = train_rows(cfg, demonstrations=False)
    if method == "grpo":
        trainer = GRPOTrainer(model=str(model_dir), reward_funcs=cfg.rewards, args=grpo,
                              train_dataset=rows)
        trainer.optimizer, trainer.scheduler = build_optimizer(trainer.model, grpo, grpo.max_steps)
        return trainer
    completions = grpo.prompts_per_step * grpo.num_generations
    ppo = PPOConfig(output_dir=out, max_steps=grpo.max_steps, learning_rate=grpo.learning_rate,
                    prompts_per_step=completions, num_generations=1,
                    micro_batch_size=grpo.micro_batch_size,
                    max_completion_length=grpo.max_completion_length, seed=grpo.seed,
                    kl_coef=ppo_kl_coef, num_ppo_epochs=ppo_epochs)
    trainer = PPOTrainer(model=str(model_dir), reward_funcs=cfg.rewards, args=ppo,
                         train_dataset=rows)
    trainer.build_optimizer()
    trainer.value_model.train()
    return trainer


def held_models(trainer) -> list[str]:
    named = {"policy": trainer.model, "reference": trainer.ref_model,
             "value": getattr(trainer, "value_model", None)}
    return [name for name, module in named.items() if module is not None]


def model_state_mb(trainer) -> float:
    """Weights of every held model, plus gradients and AdamW state of the trained ones."""
    modules = [m for m in (trainer.model, trainer.ref_model, getattr(trainer, "value_model", None))
               if m is not None]
    weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    grads = sum(p.numel() * p.element_size() for g in trainer.optimizer.param_groups
                for p in g["params"])
    adam = sum(t.numel() * t.element_size() for state in trainer.optimizer.state.values()
               for t in state.values() if hasattr(t, "numel") and t.dim() > 0)
    return (weights + grads + adam) / 2**20


def worker(method: str, args) -> dict:
    """Train ``method`` for ``args.budget`` training seconds, then evaluate its snapshots."""
    import torch

    from grpokit.models import save_model

    torch.set_num_threads(args.threads)
    baseline = peak_rss_mb()
    model_dir = sft_model(args.sft_steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(method, model_dir, args.sft_steps, str(Path(tmp) / "run"),
                               args.grpo_beta, args.ppo_kl_coef, args.ppo_epochs)
        trainer.model.train()
        torch.manual_seed(trainer.args.seed)
        clock, timings, tokens, snapshots = 0.0, [], 0, []
        marks = [args.budget * (i + 1) / args.points for i in range(args.points)]
        completions = trainer.args.prompts_per_step * trainer.args.num_generations
        while clock < args.budget:
            metrics = trainer.step()
            timings.append({k: v for k, v in metrics.items() if k.startswith("time/")})
            clock += metrics["time/step"]
            tokens += round(metrics["completion/mean_length"] * completions)
            while marks and clock >= marks[0]:
                marks.pop(0)
                path = save_model(trainer.model, trainer.tokenizer, Path(tmp) / f"snap-{len(snapshots)}")
                snapshots.append({"train_seconds": clock, "step": trainer.step_index,
                                  "completion_tokens": tokens, "reward_mean": metrics["reward/mean"],
                                  "dir": path})
        peak = peak_rss_mb()
        result = {
            "method": method, "models_held": held_models(trainer), "peak_rss_mb": peak,
            "baseline_rss_mb": baseline, "above_baseline_mb": peak - baseline,
            "model_state_mb": model_state_mb(trainer), "steps": trainer.step_index,
            "seconds_per_step": statistics.median(t["time/step"] for t in timings),
            "median_time_splits": {k: statistics.median(t[k] for t in timings) for k in timings[0]},
            "train_seconds": clock, "completion_tokens": tokens, "threads": args.threads,
            "config": trainer.args.model_dump(),
        }
        del trainer
        for snap in snapshots:
            snap["eval"] = evaluate_dir(snap.pop("dir"), args.sft_steps, args.eval_problems,
                                        args.eval_samples)
    return {**result, "curve": snapshots}


def spawn(method: str, args) -> dict:
    """Run :func:`worker` in a fresh interpreter so peaks do not mix."""
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "out")}
    command = [sys.executable, __file__, "--worker", method]
    for key, value in settings.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def accuracy_at(curve: list[dict], seconds: float) -> float:
    """pass@1 of the last snapshot taken by ``seconds`` of training."""
    reached = [p for p in curve if p["train_seconds"] <= seconds + 1e-9]
    return reached[-1]["eval"]["pass@1"] if reached else float("nan")


def table(results: dict, start: dict) -> str:
    grpo, ppo = results["grpo"], results["ppo"]
    rows = [("models held", ", ".join(grpo["models_held"]), ", ".join(ppo["models_held"]), None),
            ("peak RSS MB", grpo["peak_rss_mb"], ppo["peak_rss_mb"], True),
            ("above import baseline MB", grpo["above_baseline_mb"], ppo["above_baseline_mb"], True),
            ("model state MB", grpo["model_state_mb"], ppo["model_state_mb"], True),
            ("seconds per step", grpo["seconds_per_step"], ppo["seconds_per_step"], True),
            ("steps in budget", grpo["steps"], ppo["steps"], True),
            ("completion tokens sampled", grpo["completion_tokens"], ppo["completion_tokens"], True),
            ("held-out pass@1 at start", start["pass@1"], start["pass@1"], None)]
    for point in grpo["curve"]:
        seconds = point["train_seconds"]
        rows.append((f"held-out pass@1 by {seconds:.0f} s", point["eval"]["pass@1"],
                     accuracy_at(ppo["curve"], seconds), True))
    lines = ["| | GRPO | PPO | GRPO / PPO |", "|---|---|---|---|"]
    for name, g, p, ratio in rows:
        fmt = lambda v: v if isinstance(v, (str, int)) else f"{v:.3f}" if v < 10 else f"{v:.0f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(g)} | {fmt(p)} | {g / p:.2f} |" if ratio and p
                     else f"| {name} | {fmt(g)} | {fmt(p)} | |")
    return "\n".join(lines)


def plot(results: dict, start: dict, sft_steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, label in (("grpo", "GRPO (policy only)"), ("ppo", "PPO (policy + value + reference)")):
        curve = results[method]["curve"]
        ax.plot([0] + [p["train_seconds"] for p in curve],
                [start["pass@1"]] + [p["eval"]["pass@1"] for p in curve], marker="o", label=label)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("held-out pass@1")
    ax.set_title(f"digit sums, from the demo's SFT model ({sft_steps} SFT steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per method")
    parser.add_argument("--points", type=int, default=6, help="evaluation points per method")
    parser.add_argument("--sft-steps", type=int, default=800, help="the demo recipe's SFT steps")
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--grpo-beta", type=float, default=0.0,
                        help="GRPO's KL coefficient (the demo recipe's 0: no reference model)")
    parser.add_argument("--ppo-kl-coef", type=float, default=0.05)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--worker", choices=METHODS)
    parser.add_argument("--out", default=str(HERE / "results" / "ppo_vs_grpo.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model_dir = sft_model(args.sft_steps)
    start = evaluate_dir(model_dir, args.sft_steps, args.eval_problems, args.eval_samples)
    results = {method: spawn(method, args) for method in METHODS}
    print(table(results, start))
    grpo, ppo = results["grpo"], results["ppo"]
    final = min(grpo["train_seconds"], ppo["train_seconds"])
    targets = {
        "peak_rss_ratio": grpo["peak_rss_mb"] / ppo["peak_rss_mb"],
        "above_baseline_ratio": grpo["above_baseline_mb"] / ppo["above_baseline_mb"],
        "model_state_ratio": grpo["model_state_mb"] / ppo["model_state_mb"],
        "memory_target_met_on_peak_rss": grpo["peak_rss_mb"] <= 0.6 * ppo["peak_rss_mb"],
        "pass@1_at_equal_time": {"seconds": final, "grpo": accuracy_at(grpo["curve"], final),
                                 "ppo": accuracy_at(ppo["curve"], final)},
    }
    targets["accuracy_target_met"] = (targets["pass@1_at_equal_time"]["grpo"]
                                      >= targets["pass@1_at_equal_time"]["ppo"])
    print(json.dumps(targets, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv),
                               "budget": {"kind": "training wall-clock seconds per method",
                                          "seconds": args.budget},
                               "start": start, "results": results, "targets": targets,
                               "seconds": time.perf_counter() - started}, indent=2, default=str))
    plot(results, start, args.sft_steps, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
