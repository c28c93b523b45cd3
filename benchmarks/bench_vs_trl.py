"""grpokit against TRL's GRPOTrainer: whole-step throughput and peak memory on identical work.

Both trainers get the same checkpoint, the same prompts and the same reward function, in fp32
on the CPU (CUDA when present). Each run is its own subprocess; the trainers alternate, config
by config. Model shapes (``--vocabs``): ``char`` and ``32k``, locally created Qwen2 checkpoints
of about 4M block parameters (untied embeddings), 8 prompts × G = 8, max_completion_length 128;
``smollm2``, the real SmolLM2-135M-Instruct (134.5M parameters, 49k BPE vocabulary), 4 prompts ×
G = 4, max_completion_length 64, reasoning-gym questions as prompts, grpokit with one group per
micro-batch. beta 0.04, loss_type grpo.

Configs: S — short prompts (16 tokens; a ~20-token question for smollm2), μ = 1; S2 — the same
with μ = 2; L — prompts of 256 tokens (few-shot solved examples for smollm2), μ = 1.

Reported: completion tokens per second of whole-step wall time (a step = one sampled batch and
its μ optimizer steps; median over steps after the first), peak RSS of the process, and the
ratios grpokit / TRL. Each worker also splits every step into phases (generate, score,
reference, and train = the rest of the step: the policy forward, backward and optimizer) by
timing the trainer's own methods, and records the process's peak RSS when each phase ends, so
the phase that sets the peak is visible (``phases`` and ``peak_after_mb`` in the JSON).

Run (TRL is an optional extra: ``pip install -e '.[bench]'``)::

    python benchmarks/bench_vs_trl.py                  # all configs, both vocabularies
    python benchmarks/bench_vs_trl.py --configs S --vocabs char --steps 3
    python benchmarks/bench_vs_trl.py --vocabs smollm2 --configs S,L --steps 4 --out benchmarks/results/vs_trl_smollm2.json
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

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import SMOLLM2, checkpoint_for, make_prompts, real_prompts  # noqa: E402

CONFIGS = {"S": dict(prompt_tokens=16, mu=1), "S2": dict(prompt_tokens=16, mu=2),
           "L": dict(prompt_tokens=256, mu=1)}
BETA = 0.04
# prompts per step, G, max_completion_length: the real model's batch lets TRL finish a CPU step
# in under a minute
BATCH = {"char": (8, 8, 128), "32k": (8, 8, 128), SMOLLM2: (4, 4, 64)}
# grpokit's micro_batch_size: the default (16) for the small shapes; one group per pass for the
# real model, whose activations at 49k vocabulary and 30 layers dominate its memory (the setting
# costs no speed there: BENCHMARKS.md §8.1). TRL keeps its defaults (gradient checkpointing on).
MICRO_BATCH = {"char": 16, "32k": 16, SMOLLM2: 4}
CACHE = Path(__file__).parent / ".cache"


def on_gpu() -> bool:
    return torch.cuda.is_available()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseProbe:
    """Seconds per phase of each step, and the process's peak RSS when each phase ends.

    ``wrap`` times one of a trainer's methods; ``end_step`` closes a step, whose ``train`` phase
    is what the wrapped phases leave of its wall time. Peak RSS only grows, so the first phase
    whose ``peak_after_mb`` equals the run's peak is the one that set it.
    """

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.peak_after_mb: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.current_peaks: dict[str, float] = {}
        self.started = time.perf_counter()

    def wrap(self, owner, method: str, phase: str, when=lambda *a, **k: True) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            if not when(*args, **kwargs):
                return original(*args, **kwargs)
            tic = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - tic
                self.current_peaks[phase] = peak_rss_mb()

        setattr(owner, method, timed)

    def end_step(self) -> None:
        now = time.perf_counter()
        wall = now - self.started
        phases = {"generate": 0.0, "score": 0.0, "reference": 0.0, **self.current}
        phases["train"] = wall - sum(phases.values())
        phases["step"] = wall
        self.steps.append(phases)
        self.peak_after_mb.append({**self.current_peaks, "train": peak_rss_mb()})
        self.current, self.current_peaks, self.started = {}, {}, now

    def median(self) -> dict[str, float]:
        later = self.steps[1:] or self.steps
        return {k: statistics.median(s[k] for s in later) for k in later[0]}


class TokenCounter:
    """The shared reward: fraction of even token ids; it also counts completion tokens per call."""

    __name__ = "even_tokens"

    def __init__(self):
        self.tokens_per_call: list[int] = []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.tokens_per_call.append(sum(len(ids) for ids in completion_ids))
        return [sum(i % 2 == 0 for i in ids) / max(len(ids), 1) for ids in completion_ids]


def run_trl(model_dir, tokenizer, prompts, mu, steps, reward, out_dir, batch, probe) -> list[float]:
    """Train with TRL; return the wall-clock time at the end of each sampled batch's μ steps."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % mu == 0:
                ends.append(time.perf_counter())
                probe.end_step()

    prompts_per_step, group, completion = batch
    args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=prompts_per_step * group,
                      num_generations=group, max_completion_length=completion, beta=BETA,
                      loss_type="grpo", num_iterations=mu, max_steps=steps * mu,
                      learning_rate=1e-6, use_cpu=not on_gpu(), bf16=on_gpu(), report_to="none",
                      save_strategy="no", logging_steps=1, shuffle_dataset=False,
                      disable_dropout=True, seed=0)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[reward], args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, callbacks=[StepEnds()])
    probe.wrap(trainer, "_generate", "generate")
    probe.wrap(trainer, "_calculate_rewards", "score")
    probe.wrap(trainer, "_get_per_token_logps_and_entropies", "reference",
               when=lambda model, *a, **k: model is trainer.ref_model)
    probe.started = time.perf_counter()
    trainer.train()
    return ends


def run_grpokit(model_dir, tokenizer, prompts, mu, steps, reward, out_dir, batch, probe,
                micro_batch_size) -> list[float]:
    """Train with grpokit; return the wall-clock time at the end of each step."""
    from grpokit import GRPOConfig, GRPOTrainer

    prompts_per_step, group, completion = batch
    args = GRPOConfig(output_dir=out_dir, prompts_per_step=prompts_per_step, num_generations=group,
                      max_completion_length=completion, beta=BETA, loss_type="grpo",
                      num_iterations=mu, max_steps=steps, learning_rate=1e-6, bf16=on_gpu(),
                      micro_batch_size=micro_batch_size)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[reward], args=args,
                          train_dataset=[{"prompt": p} for p in prompts],
                          processing_class=tokenizer)
    ends, step = [], trainer.step

    def timed_step():
        metrics = step()
        ends.append(time.perf_counter())
        probe.end_step()
        return metrics

    trainer.step = timed_step
    probe.wrap(trainer, "sample", "generate")
    probe.wrap(trainer, "score", "score")
    probe.wrap(trainer, "reference_logprobs", "reference")
    probe.started = time.perf_counter()
    trainer.train(show_progress=False)
    return ends


def worker(name: str, vocab: str, config: str, steps: int) -> dict:
    """One trainer, one config, in this process; returns its figures."""
    from transformers import AutoTokenizer

    settings, batch = CONFIGS[config], BATCH[vocab]
    model_dir = checkpoint_for(vocab, "4M", CACHE)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    count = batch[0] * steps
    prompts = (real_prompts(tokenizer, count, settings["prompt_tokens"]) if vocab == SMOLLM2
               else make_prompts(vocab, count, settings["prompt_tokens"]))
    reward, run = TokenCounter(), {"trl": run_trl, "grpokit": run_grpokit}[name]
    rss_before, probe = peak_rss_mb(), PhaseProbe()
    with tempfile.TemporaryDirectory() as out_dir:
        own = {"micro_batch_size": MICRO_BATCH[vocab]} if name == "grpokit" else {}
        ends = run(model_dir, tokenizer, prompts, settings["mu"], steps, reward, out_dir, batch, probe, **own)
    rates = [tokens / (end - start) for tokens, start, end
             in zip(reward.tokens_per_call[1:], ends, ends[1:])]
    return {"trainer": name, "vocab": vocab, "config": config, "steps": len(ends),
            "tokens_per_s": statistics.median(rates), "rates": rates,
            "completion_tokens_per_step": reward.tokens_per_call,
            "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": rss_before,
            "phases": probe.steps, "median_phases_s": probe.median(),
            "peak_after_mb": probe.peak_after_mb}


def spawn(name: str, vocab: str, config: str, steps: int) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--vocabs", vocab, "--configs", config,
               "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {vocab} {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: list[dict]) -> str:
    rows = ["| vocab | config | TRL tok/s | grpokit tok/s | speed-up | TRL peak RSS MB | "
            "grpokit peak RSS MB | memory ratio |", "|---|---|---|---|---|---|---|---|"]
    pairs = {}
    for r in results:
        pairs.setdefault((r["vocab"], r["config"]), {})[r["trainer"]] = r
    for (vocab, config), pair in pairs.items():
        trl, ours = pair["trl"], pair["grpokit"]
        rows.append(f"| {vocab} | {config} | {trl['tokens_per_s']:.0f} | {ours['tokens_per_s']:.0f}"
                    f" | {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}× | "
                    f"{trl['peak_rss_mb']:.0f} | {ours['peak_rss_mb']:.0f} | "
                    f"{ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="S,S2,L")
    parser.add_argument("--vocabs", default="char,32k")
    parser.add_argument("--steps", type=int, default=4, help="sampled batches per run (first is warm-up)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_trl.json"))
    parser.add_argument("--worker", choices=["trl", "grpokit"])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.vocabs, args.configs, args.steps)))
        return
    results = []
    for vocab in args.vocabs.split(","):
        for config in args.configs.split(","):
            for name in ("trl", "grpokit"):
                results.append(spawn(name, vocab, config, args.steps))
                r = results[-1]
                print(f"{vocab:5} {config:3} {name:8} {r['tokens_per_s']:8.0f} tok/s  "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    table = markdown(results)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "device":
                                          "cuda" if on_gpu() else "cpu", "results": results,
                                          "table": table}, indent=2))


if __name__ == "__main__":
    main()
