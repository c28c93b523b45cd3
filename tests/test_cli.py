"""The CLI stages on the embedded default at toy sizes: what each writes, and config errors."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from grpokit.cli import app

TOY = {
    "model": "embedded",
    "data": {"task": "digit_sum", "num_train": 64, "num_test": 4},
    "sft": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3},
    "grpo": {"max_steps": 2, "prompts_per_step": 2, "num_generations": 2,
             "max_completion_length": 12, "learning_rate": 1e-4, "save_steps": 1},
    "eval": {"num_problems": 3, "num_samples": 2, "max_completion_length": 12},
}


@pytest.fixture
def toy_config(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY))
    return path


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_then_train_then_eval(tmp_path, toy_config):
    sft_dir, grpo_dir, eval_dir = tmp_path / "sft", tmp_path / "grpo", tmp_path / "eval"
    result = invoke("sft", toy_config, f"sft.output_dir={sft_dir}", "--no-progress")
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(sft_dir / "metrics.jsonl")) == 3
    assert yaml.safe_load((sft_dir / "config.yaml").read_text())["max_steps"] == 3
    assert yaml.safe_load((sft_dir / "run_config.yaml").read_text())["data"]["num_train"] == 64
    AutoModelForCausalLM.from_pretrained(sft_dir / "model")

    result = invoke("train", toy_config, f"model={sft_dir / 'model'}",
                    f"grpo.output_dir={grpo_dir}", "--no-progress")
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in read_jsonl(grpo_dir / "metrics.jsonl")] == [1, 2]
    assert (grpo_dir / "checkpoint-2" / "config.json").is_file()
    assert yaml.safe_load((grpo_dir / "config.yaml").read_text())["num_generations"] == 2
    assert json.loads((grpo_dir / "summary.json").read_text())["steps"] == 2

    result = invoke("eval", toy_config, f"model={grpo_dir / 'model'}",
                    f"eval.output_dir={eval_dir}", "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads((eval_dir / "summary.json").read_text())["eval"]
    assert set(metrics) >= {"pass@1", "pass@k", "maj@k", "greedy_accuracy", "format_rate"}
    assert len(read_jsonl(eval_dir / "samples.jsonl")) == 3


def test_unknown_key_suggests_the_nearest_name(tmp_path, toy_config):
    result = invoke("train", toy_config, "grpo.num_generation=4")
    assert result.exit_code == 2
    assert "did you mean 'num_generations'" in result.output


def test_out_of_range_value_names_the_key_and_where_it_was_set(tmp_path, toy_config):
    result = invoke("train", toy_config, "grpo.epsilon=1.5")
    assert result.exit_code == 2
    assert "override 'grpo.epsilon=1.5': grpo.epsilon: Input should be less than 1" in result.output
    in_file = tmp_path / "bad.yaml"
    in_file.write_text(yaml.safe_dump({**TOY, "grpo": {**TOY["grpo"], "epsilon": 1.5}}))
    result = invoke("train", in_file)
    assert result.exit_code == 2 and f"{in_file}: grpo.epsilon: Input should be less than 1" in result.output


@pytest.mark.slow
def test_demo_writes_stage_results_through_the_installed_entry_point(tmp_path, served_processes):
    out = tmp_path / "demo"
    overrides = ["sft.max_steps=3", "grpo.max_steps=1", "grpo.prompts_per_step=2",
                 "data.num_train=32", "data.num_test=3", "eval.num_problems=3",
                 "eval.num_samples=2", "eval.max_completion_length=8",
                 "grpo.max_completion_length=8", "sample.num_prompts=4",
                 "sample.max_completion_length=8", "sample.min_rewards={}", "rm.max_steps=2",
                 "pipeline.stages.sft2.overrides.sft.max_steps=2",
                 "pipeline.stages.rm.overrides.data.num_train=8",
                 "pipeline.stages.grpo2.overrides.grpo.max_steps=1",
                 "pipeline.stages.judge.overrides.sft.max_steps=2", "sample.judge.on_error=none"]
    subprocess.run([sys.executable, "-m", "grpokit.cli", "demo", "--output-dir", str(out),
                    "--no-progress", *overrides], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["sft", "grpo", "judge", "sample", "sft2", "rm", "grpo2"]
    for stage in summary["stages"]:
        if stage["type"] in ("sft", "grpo"):
            assert set(stage["eval"]) >= {"pass@1", "greedy_accuracy", "maj@k", "pass@k", "format_rate",
                                          "mean_completion_length", "reward_model_score", "harmful_compliance",
                                          "over_refusal"}
    assert summary["judge"]["stage"] == "sample" and summary["judge"]["server"].startswith("transformers serve")
    assert set(summary["judge"]["agreement"]) >= {"precision", "recall"}
    assert served_processes(out / "judge") == []  # the pipeline stopped the judge it served
