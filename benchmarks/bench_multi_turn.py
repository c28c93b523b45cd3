"""What environment turns cost: sampling multi-turn episodes against one turn of the same number
of sampled tokens, on SmolLM2-135M-Instruct.

Multi-turn: ``--prompts`` chat prompts × G episodes with an environment that answers every turn
with a short tool message, ``--turns`` model turns of at most ``--turn-tokens`` each (every
turn but the first re-reads its whole context: the prompt, earlier turns and tool messages).
Single-turn: the same prompts and G, one turn, its length set to the multi-turn run's mean
sampled tokens per episode. Reported: sampled tokens per second of each (the environment's own
time excluded), and their ratio.

Run::

    python benchmarks/bench_multi_turn.py --out benchmarks/results/multi_turn.json
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "multi_turn.json"))
    args = parser.parse_args()
    from grpokit.agents.multi_turn import sample_episodes
    from grpokit.models import load_model, load_tokenizer
    from grpokit.sampling.sampler import SamplingParams, generate

    model_dir = checkpoint_for(SMOLLM2, "4M", CACHE)
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
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


if __name__ == "__main__":
    main()
