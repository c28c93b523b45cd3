"""The grpokit sampler against ``model.generate`` on the same model and the same P × G batch.

``model.generate`` gets each prompt repeated G times (what a trainer built on it does); the
sampler encodes each prompt once and forks its KV cache. Both sample at temperature 1 for
exactly ``--new-tokens`` tokens (EOS disabled), so the work is identical. Reported: completion
tokens per second, median of ``--repeats`` runs, for each prompt length.

    python benchmarks/bench_rollout.py
    python benchmarks/bench_rollout.py --vocabs 32k --prompt-lengths 16,256,1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import build_checkpoint, make_prompts  # noqa: E402

from grpokit.models import load_model, pick_device  # noqa: E402
from grpokit.sampling.sampler import SamplingParams, generate, left_pad  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


def time_call(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def hf_generate(model, prompt_ids, group, new_tokens, pad_id):
    ids, mask = left_pad([p for p in prompt_ids for _ in range(group)], pad_id)
    device = next(model.parameters()).device
    with torch.no_grad():
        model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                       temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, pad_token_id=pad_id)


def grpokit_generate(model, prompt_ids, group, new_tokens, pad_id):
    generate(model, prompt_ids, group, SamplingParams(new_tokens, 1.0), eos_token_id=-1,
             pad_token_id=pad_id)


def measure(vocab: str, prompt_length: int, prompts: int, group: int, new_tokens: int,
            repeats: int) -> dict:
    from transformers import PreTrainedTokenizerFast

    model_dir = build_checkpoint(CACHE / f"qwen2-4M-{vocab}", vocab, "4M")
    model = load_model(model_dir, pick_device()).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    prompt_ids = [tokenizer(p)["input_ids"] for p in make_prompts(vocab, prompts, prompt_length)]
    tokens = prompts * group * new_tokens
    result = {"vocab": vocab, "prompt_length": prompt_length, "rows": prompts * group,
              "new_tokens": new_tokens}
    for name, fn in (("model.generate", hf_generate), ("grpokit", grpokit_generate)):
        seconds = time_call(lambda: fn(model, prompt_ids, group, new_tokens,
                                       tokenizer.pad_token_id), repeats)
        result[name] = tokens / seconds
    result["speedup"] = result["grpokit"] / result["model.generate"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocabs", default="char,32k")
    parser.add_argument("--prompt-lengths", default="16,256,1024")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rollout.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    print("| vocab | prompt tokens | model.generate tok/s | grpokit tok/s | speed-up |")
    print("|---|---|---|---|---|")
    for vocab in args.vocabs.split(","):
        for length in map(int, args.prompt_lengths.split(",")):
            r = measure(vocab, length, args.prompts, args.group, args.new_tokens, args.repeats)
            rows.append(r)
            print(f"| {vocab} | {length} | {r['model.generate']:.0f} | {r['grpokit']:.0f} | "
                  f"{r['speedup']:.2f}× |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": rows},
                                         indent=2))


if __name__ == "__main__":
    main()
