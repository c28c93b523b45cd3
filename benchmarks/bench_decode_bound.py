"""How close decoding is to the memory-bandwidth bound on the real model.

A decode step multiplies a handful of rows (one per live completion) by every weight matrix, so
it reads all the weights once: on SmolLM2-135M in fp32, 538 MB per step. This script measures the
machine's read bandwidth (a reduction over a weight-sized buffer, best of several) and the time
per decode step of grpokit's sampler and of transformers' ``generate`` (what TRL samples with) on
the same prompts, every row decoding the full ``--tokens`` (no early stop), and reports each
against the bound ``weight bytes / bandwidth`` and against the compute bound at the measured fp32
matmul peak. With ``--profile``, the top operators of grpokit's decoding by self CPU time
(``torch.profiler``) say where the rest goes.

Run::

    python benchmarks/bench_decode_bound.py --out benchmarks/results/decode_bound.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import SMOLLM2, checkpoint_for, real_prompts  # noqa: E402
from bench_roofline import matmul_peak_gflops  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


def read_bandwidth_gb_s(num_bytes: int, repeats: int = 5) -> float:
    """GB/s of ``buffer.sum()`` over a float32 buffer of ``num_bytes`` (best of ``repeats``)."""
    buffer = torch.ones(num_bytes // 4)
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - tic)
    return num_bytes / best / 1e9


def profile_operators(model, prompt_ids, group, tokens, top: int = 12) -> list[dict]:
    """The ``top`` operators of grpokit's decoding by self CPU time: name, ms per decode step, calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        grpokit_step_ms(model, prompt_ids, group, tokens)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"name": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / tokens, "calls_per_step": e.count / tokens}
            for e in events]


def grpokit_step_ms(model, prompt_ids, group, tokens) -> float:
    from grpokit.sampling.sampler import SamplingParams, generate

    params = SamplingParams(max_new_tokens=tokens, temperature=1.0)
    tic = time.perf_counter()
    generate(model, prompt_ids, group, params, eos_token_id=-1, pad_token_id=0,
             generator=torch.Generator().manual_seed(0))
    return (time.perf_counter() - tic) / tokens * 1e3


def hf_step_ms(model, tokenizer, prompts, group, tokens) -> float:
    batch = tokenizer([p for p in prompts for _ in range(group)], return_tensors="pt", padding=True,
                      padding_side="left")
    tic = time.perf_counter()
    model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                   pad_token_id=tokenizer.pad_token_id)
    return (time.perf_counter() - tic) / tokens * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="print the top operators of grpokit's decoding")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_bound.json"))
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = checkpoint_for(SMOLLM2, "4M", CACHE)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = read_bandwidth_gb_s(weight_bytes)
    bound_ms = weight_bytes / (bandwidth * 1e9) * 1e3
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in real_prompts(tokenizer, args.prompts, 16)]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    with torch.no_grad():
        grpokit_step_ms(model, prompt_ids, args.group, 4)  # warm-up
        ours = min(grpokit_step_ms(model, prompt_ids, args.group, args.tokens) for _ in range(2))
        theirs = min(hf_step_ms(model, tokenizer, prompts, args.group, args.tokens) for _ in range(2))
        operators = profile_operators(model, prompt_ids, args.group, args.tokens) if args.profile else None
    flops_per_step = 2 * sum(p.numel() for p in model.parameters()) * args.prompts * args.group
    peak = matmul_peak_gflops()
    result = {"weight_mb": weight_bytes / 2**20, "compute_bound_ms_per_step": flops_per_step / (peak * 1e9) * 1e3,
              "matmul_peak_gflop_s": peak, "top_operators": operators, "read_bandwidth_gb_s": bandwidth, "bound_ms_per_step": bound_ms,
              "grpokit_ms_per_step": ours, "hf_generate_ms_per_step": theirs,
              "rows": args.prompts * args.group, "tokens": args.tokens, "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), **result}, indent=2))


if __name__ == "__main__":
    main()
