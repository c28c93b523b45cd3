"""Model FLOPs utilisation of a grpokit GRPO step against this machine's fp32 matmul peak.

1. Peak: the best of several large square fp32 matmuls (``torch.mm``), in GFLOP/s.
2. A step's FLOPs, counted from the shapes (multiply-add = 2 FLOPs; attention included):
   - generate: prompt prefill once per prompt + one position per completion token;
   - reference pass (beta > 0): one forward over the completions (prompt shared);
   - train: forward + backward (2×) of the body, and for the LM head forward, recompute and
     two gradient matmuls (4×, see ``grpokit.trainers.logprobs``).
3. MFU = counted FLOPs / (seconds × peak), per phase and for the whole step.

    python benchmarks/bench_roofline.py
    python benchmarks/bench_roofline.py --size 16M --prompt 256
    python benchmarks/bench_roofline.py --size smollm2 --prompt 128 --completion 64 --out benchmarks/results/roofline_smollm2.json

With ``--size smollm2`` the model is SmolLM2-135M-Instruct (its tied embeddings are its LM head)
and the prompts are few-shot reasoning-gym questions of ``--prompt`` tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import SMOLLM2, checkpoint_for  # noqa: E402
from bench_scaling import CACHE, run_point  # noqa: E402

from grpokit.models import load_model  # noqa: E402


def matmul_peak_gflops(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 10) -> float:
    """Best observed fp32 ``torch.mm`` throughput over square sizes and repeats, in GFLOP/s."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def forward_flops(config, body_params: int, head_params: int, new_tokens: int,
                  context: float, head_tokens: int) -> float:
    """FLOPs of one forward: linear layers + attention scores/values + the LM head.

    ``context`` is the mean number of keys each new token attends to.
    """
    attention = 4 * config.num_hidden_layers * config.hidden_size * context * new_tokens
    return 2 * body_params * new_tokens + attention + 2 * head_params * head_tokens


def step_flops(model, prompts: int, group: int, prompt_len: int, completion: int) -> dict:
    config = model.config
    body = sum(p.numel() for p in model.model.layers.parameters())
    head = model.lm_head.weight.numel()
    rows = prompts * group
    prefill = forward_flops(config, body, head, prompts * prompt_len, prompt_len / 2, prompts)
    decode = forward_flops(config, body, head, rows * completion, prompt_len + completion / 2,
                           rows * completion)
    completions = forward_flops(config, body, 0, rows * completion + prompts * prompt_len,
                                prompt_len + completion / 2, 0)
    head_pass = 2 * head * rows * completion
    return {"generate": prefill + decode, "reference": completions + head_pass,
            "train": 3 * completions + 4 * head_pass}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="4M")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--completion", type=int, default=128)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "roofline.json"))
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    setting = {"G": args.G, "completion": args.completion, "prompt": args.prompt, "size": args.size}
    timing = run_point(setting, args.steps)
    model = load_model(checkpoint_for(SMOLLM2 if args.size == SMOLLM2 else "char", args.size, CACHE))
    flops = step_flops(model, 4, args.G, args.prompt, args.completion)
    seconds = {"generate": timing["generate_s"], "reference": timing["reference_s"],
               "train": timing["train_s"]}
    result = {"peak_gflops": peak, "setting": setting, "phases": {}}
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
    print("| phase | GFLOP | seconds | GFLOP/s | MFU |\n|---|---|---|---|---|")
    for phase in ("generate", "reference", "train"):
        rate = flops[phase] / 1e9 / seconds[phase]
        result["phases"][phase] = {"gflop": flops[phase] / 1e9, "seconds": seconds[phase],
                                   "mfu": rate / peak}
        print(f"| {phase} | {flops[phase] / 1e9:.1f} | {seconds[phase]:.2f} | {rate:.1f} | "
              f"{rate / peak:.0%} |")
    total = sum(flops.values()) / 1e9 / timing["step_s"]
    result["step_mfu"] = total / peak
    print(f"| whole step | {sum(flops.values()) / 1e9:.1f} | {timing['step_s']:.2f} | "
          f"{total:.1f} | {total / peak:.0%} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), **result}, indent=2))


if __name__ == "__main__":
    main()
