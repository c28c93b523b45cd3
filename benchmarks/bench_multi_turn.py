"""What environment turns cost: sampling multi-turn episodes against one turn of the same number
of sampled tokens, on SmolLM2-135M-Instruct.

Multi-turn: ``--prompts`` chat prompts × G episodes with an environment that answers every turn
with a short tool message, ``--turns`` model turns of at most ``--turn-tokens`` each (every
turn but the first re-reads its whole context: the prompt, earlier turns and tool messages).
Single-turn: the same prompts and G, one turn, its length set to the multi-turn run's mean
sampled tokens per episode. Reported: sampled tokens per second of each (the environment's own
time excluded), and their ratio.

``--steps N``: whole GRPO steps instead (sample, score, train), N per mode after one warm-up
step, with the same environment in a ``GRPOTrainer``: sampled tokens per second of step time,
multi-turn against single-turn with ``max_completion_length`` set to the multi-turn episodes'
mean sampled tokens (the environment's tokens are context in the training forward too).

Run::

    python benchmarks/bench_multi_turn.py --out benchmarks/results/multi_turn.json
    python benchmarks/bench_multi_turn.py --steps 3 --out benchmarks/results/multi_turn_steps.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import SMOLLM2, checkpoint_for, real_prompts  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


class AnswerEveryTurn:
    """An environment that answers each model turn with a one-line tool message."""

    def respond(self, episodes, turns, stats):
        return [[{"role": "tool", "content": "noted"}] for _ in turns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--turn-tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=0, help="whole GRPO steps per mode (0: sampling only)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "multi_turn.json"))
    args = parser.parse_args()
    from grpokit.agents.multi_turn import sample_episodes
    from grpokit.models import load_model, load_tokenizer
    from grpokit.sampling.sampler import SamplingParams, generate

    model_dir = checkpoint_for(SMOLLM2, "4M", CACHE)
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    if args.steps:
        return whole_steps(args, model_dir, tokenizer)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
               for q in real_prompts(tokenizer, args.prompts, 16)]
    budget = args.turns * (args.turn_tokens + 16)
    tic = time.perf_counter()
    episodes, _, stats = sample_episodes(model, tokenizer, [p for p in prompts for _ in range(args.group)], args.group,
                                         SamplingParams(args.turn_tokens),
                                         AnswerEveryTurn(), max_turns=args.turns, max_tokens=budget,
                                         generator=torch.Generator().manual_seed(0))
    multi_seconds = time.perf_counter() - tic - stats.environment_seconds
    sampled = sum(sum(e.sampled_mask) for e in episodes)
    per_episode = round(sampled / len(episodes))
    tic = time.perf_counter()
    single = generate(model, prompts, args.group, SamplingParams(per_episode), eos_token_id=-1,
                      pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    single_seconds = time.perf_counter() - tic
    single_tokens = int(single.completion_mask.sum())
    result = {"episodes": len(episodes), "mean_model_turns": sum(stats.model_turns) / len(episodes),
              "multi_turn_sampled_tokens": sampled, "multi_turn_seconds": multi_seconds,
              "multi_turn_tokens_per_s": sampled / multi_seconds,
              "environment_tokens": sum(len(e.ids) - sum(e.sampled_mask) for e in episodes),
              "single_turn_tokens": single_tokens, "single_turn_seconds": single_seconds,
              "single_turn_tokens_per_s": single_tokens / single_seconds}
    result["multi_over_single"] = result["multi_turn_tokens_per_s"] / result["single_turn_tokens_per_s"]
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), **result}, indent=2))


def note(text: str) -> str:
    """Take a note.

    Args:
        text: What to note.
    """
    return "noted"


def whole_steps(args, model_dir: Path, tokenizer) -> None:
    """Multi-turn and single-turn GRPO steps side by side (see the module docstring)."""
    from grpokit import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": q}]} for q in real_prompts(tokenizer, args.prompts * 4, 16)]
    varied = lambda completions, **kwargs: [float(len(str(c)) % 3) for c in completions]  # noqa: E731
    budget = args.turns * (args.turn_tokens + 16)

    def run(**settings) -> list[dict]:
        with tempfile.TemporaryDirectory() as out:
            config = GRPOConfig(output_dir=out, max_steps=args.steps + 1, prompts_per_step=args.prompts,
                                num_generations=args.group, micro_batch_size=args.prompts * args.group,
                                beta=0.0, save_steps=0, learning_rate=1e-6, **settings)
            tools = [note] if "max_tool_calling_iterations" in settings else None
            trainer = GRPOTrainer(str(model_dir), [varied], config, rows, tools=tools)
            if tools:
                trainer.agents.environment = AnswerEveryTurn()  # every turn answered: episodes of several turns
            trainer.train(show_progress=False)
            return trainer.history[1:]  # the first step warms up

    def rate(history: list[dict], tokens_key: str) -> dict:
        tokens = [h[tokens_key] * args.prompts * args.group for h in history]
        return {"sampled_tokens_per_step": statistics.mean(tokens),
                "step_seconds": statistics.mean(h["time/step"] for h in history),
                "sampled_tokens_per_s": sum(tokens) / sum(h["time/step"] for h in history),
                "generate_seconds": statistics.mean(h["time/generate"] for h in history),
                "train_seconds": statistics.mean(h["time/train"] for h in history)}

    multi_history = run(max_completion_length=budget, max_tool_calling_iterations=args.turns - 1)
    multi = rate(multi_history, "agent/model_tokens_mean")
    multi["environment_tokens_per_episode"] = statistics.mean(h["agent/environment_tokens_mean"] for h in multi_history)
    multi["model_turns_per_episode"] = statistics.mean(h["agent/turns_mean"] for h in multi_history)
    per_episode = round(multi["sampled_tokens_per_step"] / (args.prompts * args.group))
    single = rate(run(max_completion_length=per_episode), "completion/mean_length")
    result = {"multi_turn_step": multi, "single_turn_step": single,
              "multi_over_single": multi["sampled_tokens_per_s"] / single["sampled_tokens_per_s"]}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), **result}, indent=2))


if __name__ == "__main__":
    main()
