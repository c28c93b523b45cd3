"""Peak memory of one GRPO step: full fine-tuning vs LoRA vs LoRA + gradient checkpointing.

Each variant runs in its own subprocess on the same locally created Qwen2 checkpoint (64M
block parameters, character vocabulary), 4 prompts of 256 tokens × G = 8, 128 completion
tokens, beta = 0.04 (so full fine-tuning holds a frozen reference copy, LoRA does not).
Reported: peak resident memory of the process (CPU) or peak allocated CUDA memory (GPU), and
the same minus the process's memory right after imports. On CPU the workers run with glibc's
mmap threshold at 64 KiB, so freed tensors go back to the OS and the peak RSS follows live
memory; with the default allocator, memory freed by one phase stays in malloc's arenas and
the peaks of the three variants mostly measure fragmentation.

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --size 16M --out benchmarks/results/memory_16M.json
    python benchmarks/bench_memory.py --size smollm2 --out benchmarks/results/memory_smollm2.json

``--size smollm2`` measures SmolLM2-135M-Instruct itself (few-shot reasoning-gym prompts of 256
tokens, its BPE tokenizer), with the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import SMOLLM2, checkpoint_for, make_prompts, real_prompts  # noqa: E402
from bench_vs_trl import CACHE, on_gpu, peak_rss_mb  # noqa: E402

VARIANTS = {
    "full": dict(use_lora=False, gradient_checkpointing=False),
    "lora": dict(use_lora=True, gradient_checkpointing=False),
    "lora+gc": dict(use_lora=True, gradient_checkpointing=True),
}
PROMPTS, G, PROMPT_TOKENS, COMPLETION_TOKENS = 4, 8, 256, 128


def worker(variant: str, size: str, steps: int) -> dict:
    """Train ``steps`` GRPO steps with ``variant`` and return its peak memory."""
    from transformers import AutoTokenizer

    from grpokit import GRPOConfig, GRPOTrainer

    baseline = peak_rss_mb()
    model_dir = checkpoint_for(SMOLLM2 if size == SMOLLM2 else "char", size, CACHE)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = (real_prompts(tokenizer, PROMPTS * steps, PROMPT_TOKENS) if size == SMOLLM2
               else make_prompts("char", PROMPTS * steps, PROMPT_TOKENS))
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, prompts_per_step=PROMPTS, num_generations=G,
                          max_completion_length=COMPLETION_TOKENS, beta=0.04, max_steps=steps,
                          learning_rate=1e-6, bf16=on_gpu(), **VARIANTS[variant])
        trainer = GRPOTrainer(model=str(model_dir), args=args,
                              reward_funcs=[lambda completions, **kw: [float(len(c) % 3) for c in completions]],
                              train_dataset=[{"prompt": p} for p in prompts],
                              processing_class=tokenizer)
        trainer.eos_token_id = -1  # every completion is exactly COMPLETION_TOKENS long
        trainer.train(show_progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu() else peak_rss_mb()
    return {"variant": variant, "size": size, "device": "cuda" if on_gpu() else "cpu",
            "peak_mb": peak, "baseline_mb": 0.0 if on_gpu() else baseline}


def spawn(variant: str, size: str, steps: int) -> dict:
    """Run :func:`worker` in a fresh interpreter so peaks do not mix."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--worker", variant, "--size", size,
                          "--steps", str(steps)], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64M")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--worker", choices=sorted(VARIANTS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.steps)))
        return
    checkpoint_for(SMOLLM2 if args.size == SMOLLM2 else "char", args.size, CACHE)
    results = [spawn(name, args.size, args.steps) for name in VARIANTS]
    full = results[0]["peak_mb"] - results[0]["baseline_mb"]
    print("| variant | peak MB | above baseline MB | vs full |\n|---|---|---|---|")
    for row in results:
        above = row["peak_mb"] - row["baseline_mb"]
        print(f"| {row['variant']} | {row['peak_mb']:.0f} | {above:.0f} | {above / full:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
