"""How a grpokit GRPO step's time grows with G, completion length, prompt length and model size.

One factor at a time from a base of P = 4 prompts, G = 8, 128 completion tokens, 16-token
prompts and the 4M-parameter (block) Qwen2 with the character vocabulary. EOS is disabled, so
every completion is exactly ``completion`` tokens and the token counts are exact. Each row is
the median of ``--steps`` steps after one warm-up step, split into generate / reference /
train seconds.

    python benchmarks/bench_scaling.py
    python benchmarks/bench_scaling.py --factors G,completion --steps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import SMOLLM2, block_parameters, checkpoint_for, make_prompts, real_prompts  # noqa: E402

CACHE = Path(__file__).parent / ".cache"
BASE = {"G": 8, "completion": 128, "prompt": 16, "size": "4M"}
FACTORS = {"G": [4, 8, 16, 32], "completion": [64, 128, 256, 512],
           "prompt": [16, 64, 256, 1024], "size": ["1M", "4M", "16M", "64M"]}
PROMPTS = 4


def run_point(setting: dict, steps: int) -> dict:
    """Train ``steps + 1`` steps at ``setting``; return median phase seconds and token counts."""
    from transformers import AutoTokenizer

    from grpokit import GRPOConfig, GRPOTrainer
    from grpokit.models import load_model

    real = setting["size"] == SMOLLM2  # the real model, with its own tokenizer and prompts
    model_dir = checkpoint_for(SMOLLM2 if real else "char", setting["size"], CACHE)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    count = PROMPTS * (steps + 1)
    prompts = (real_prompts(tokenizer, count, setting["prompt"]) if real
               else make_prompts("char", count, setting["prompt"]))
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, prompts_per_step=PROMPTS, num_generations=setting["G"],
                          max_completion_length=setting["completion"], beta=0.04,
                          max_steps=steps + 1, learning_rate=1e-6)
        trainer = GRPOTrainer(model=str(model_dir), args=args,
                              reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                              train_dataset=[{"prompt": p} for p in prompts],
                              processing_class=tokenizer)
        trainer.eos_token_id = -1  # never sampled: every completion is exactly `completion` long
        trainer.train(show_progress=False)
        metrics = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")][1:]
    median = lambda key: statistics.median(m[key] for m in metrics)  # noqa: E731
    step, gen, train = median("time/step"), median("time/generate"), median("time/train")
    completion_tokens = PROMPTS * setting["G"] * setting["completion"]
    return {**setting, "block_params": block_parameters(load_model(model_dir)),
            "step_s": step, "generate_s": gen, "train_s": train,
            "reference_s": median("time/reference"),
            "completion_tokens": completion_tokens,
            "completion_tokens_per_s": completion_tokens / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--factors", default="G,completion,prompt,size")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling.json"))
    args = parser.parse_args()
    if args.point:
        print(json.dumps(run_point(json.loads(args.point), args.steps)))
        return
    rows = []
    print("| factor | value | step s | generate s | reference s | train s | completion tok/s |")
    print("|---|---|---|---|---|---|---|")
    for factor in args.factors.split(","):
        for value in FACTORS[factor]:
            setting = {**BASE, factor: value}
            done = subprocess.run([sys.executable, __file__, "--point", json.dumps(setting),
                                   "--steps", str(args.steps)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            r = {"factor": factor, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(r)
            print(f"| {factor} | {value} | {r['step_s']:.2f} | {r['generate_s']:.2f} | "
                  f"{r['reference_s']:.2f} | {r['train_s']:.2f} | "
                  f"{r['completion_tokens_per_s']:.0f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": rows},
                                         indent=2))


if __name__ == "__main__":
    main()
