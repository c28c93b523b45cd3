"""Every mistake a user makes in a first hour ends with one screen: exit code 2, no traceback, and
a message naming the file, row, key or function and what to do (docs/RELIABILITY.md lists them).

Most cases run the command line in-process (an exception that escaped would give exit code 1);
three run the installed entry point in a subprocess, as a user does, to see the whole output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from grpokit.cli import app
from grpokit.models import create_embedded_default

TOY = {
    "model": "embedded",
    "data": {"task": "digit_sum", "num_train": 16, "num_test": 4},
    "grpo": {"max_steps": 1, "prompts_per_step": 2, "num_generations": 2, "max_completion_length": 8},
    "sft": {"max_steps": 1, "per_device_train_batch_size": 2},
}


def write_config(directory, **changes) -> str:
    tree = {**TOY, **changes}
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def user_error(*args) -> str:
    """Run the CLI; assert it ended as a user error (exit 2, no traceback, one screen); return
    what it printed."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert len(result.output.splitlines()) <= 25, result.output
    return result.output


def subprocess_user_error(*args, cwd) -> str:
    result = subprocess.run([sys.executable, "-m", "grpokit", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) <= 25, output
    return output


# --------------------------------------------------------------------------------- config


def test_a_config_error_answers_before_torch_is_imported(tmp_path):
    path = write_config(tmp_path, grpo={"num_generation": 4, "epsilon": 1.5})
    check = ("import runpy, sys\nsys.argv = ['grpokit', 'train', sys.argv[1], 'sft.max_stepz=3']\n"
             "try:\n    runpy.run_module('grpokit', run_name='__main__')\nexcept SystemExit as end:\n"
             "    print('torch imported:', 'torch' in sys.modules, 'exit', end.code)\n")
    result = subprocess.run([sys.executable, "-c", check, path], capture_output=True, text=True, timeout=60)
    assert "torch imported: False exit 2" in result.stdout, result.stdout + result.stderr
    assert f"{path}: grpo.num_generation: unknown key; did you mean 'num_generations'?" in result.stderr
    assert f"{path}: grpo.epsilon: Input should be less than 1 (got 1.5)" in result.stderr
    assert "override 'sft.max_stepz=3': sft.max_stepz: unknown key; did you mean 'max_steps'?" in result.stderr


def test_a_missing_config_file_is_named(tmp_path):
    assert f"config file '{tmp_path / 'nope.yaml'}' does not exist" in user_error("train", tmp_path / "nope.yaml")


def test_debug_shows_the_traceback_too(tmp_path):
    result = subprocess.run([sys.executable, "-m", "grpokit", "train", str(tmp_path / "nope.yaml"), "--debug"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" in result.stderr and "does not exist" in result.stderr


# ----------------------------------------------------------------------------------- data


@pytest.mark.parametrize("content,expected", [
    (None, "data file 'missing.jsonl' does not exist (looked in"),
    ("\n", "data file 'mine.jsonl' holds no rows"),
    ('{"prompt": "sum a1:", "answer": "1"}\n{"prompt": "x",,}\n', "'mine.jsonl' line 2 is not valid JSON"),
    ('{"prompt": "sum a1:", "answer": "1"}\n{"question": "2+2?", "answer": "#### 4"}\n',
     "mine.jsonl row 1 (line 2): no 'prompt' column (found columns: question, answer)"),
])
def test_data_file_errors_name_the_file_and_row(tmp_path, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    name = "missing.jsonl" if content is None else "mine.jsonl"
    if content is not None:
        (tmp_path / name).write_text(content)
    output = user_error("train", write_config(tmp_path), f"data.path={name}")
    assert "DatasetError: " in output and expected in output
    if "question" in expected:
        assert "set data.format: gsm8k" in output


def test_characters_the_tokenizer_cannot_encode_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jsonl").write_text('{"prompt": "sum a1:", "answer": "1"}\n{"prompt": "café:", "answer": "1"}\n')
    output = user_error("train", write_config(tmp_path), "data.path=mine.jsonl")
    assert "train_dataset row 1: the tokenizer has no token for 'é'" in output


# -------------------------------------------------------------------------------- rewards


MY_REWARDS = '''
def fine(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def boom(prompts, completions, **kwargs):
    return [float(c.index("zzz")) for c in completions]
'''


@pytest.mark.parametrize("reward,expected", [
    ("formatt", "rewards[0]: unknown reward 'formatt'; did you mean 'format'?"),
    ("nosuchmodule:fn", "rewards[0] 'nosuchmodule:fn': no module named 'nosuchmodule'. grpokit looks in the "
                        "working directory"),
    ("myrewards:fin", "rewards[0] 'myrewards:fin': module 'myrewards'"),
    ({"name": "length_penalty", "target_length": 4}, "rewards[0]: reward 'length_penalty' needs option(s) "
                                                      "'max_length'; write it as a mapping"),
    ({"name": "soft_overlong", "max_length": 8, "cache_len": 2}, "'cache_len': did you mean 'cache_length'?"),
])
def test_reward_references_name_the_config_key_and_the_fix(tmp_path, monkeypatch, reward, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myrewards.py").write_text(MY_REWARDS)
    output = user_error("train", write_config(tmp_path, rewards=[reward]))
    assert expected in output
    if reward == "myrewards:fin":
        assert "did you mean 'fine'?" in output


@pytest.mark.slow
def test_a_module_in_the_working_directory_imports_and_a_raising_reward_names_its_line(tmp_path):
    (tmp_path / "myrewards.py").write_text(MY_REWARDS)
    output = subprocess_user_error("train", write_config(tmp_path, rewards=["myrewards:fine", "myrewards:boom"]),
                                   "--no-progress", cwd=tmp_path)
    assert "RewardFunctionError: reward function 'boom' raised ValueError: substring not found" in output
    assert f"{tmp_path / 'myrewards.py'}:7 in boom" in output and "on sample 0 of 4" in output
    assert "sample 0 prompt: 'sum " in output and "reward_errors: skip" in output


# --------------------------------------------------------------------------- model files


@pytest.mark.slow
def test_a_truncated_weights_file_names_the_directory_and_the_file(tmp_path):
    model_dir = create_embedded_default(tmp_path / "model")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    output = subprocess_user_error("train", write_config(tmp_path, model=str(model_dir)), "--no-progress",
                                   cwd=tmp_path)
    assert f"ModelLoadError: cannot load the model in '{model_dir}'" in output
    assert "model.safetensors (100 bytes)" in output and "save the model again" in output


def test_a_model_path_that_is_not_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = user_error("train", write_config(tmp_path, model="runs/nope"))
    assert "model path 'runs/nope' is not a directory (looked in" in output and "model: embedded" in output


# ---------------------------------------------------------------------------- checkpoints


def test_a_damaged_checkpoint_names_its_file(tmp_path):
    out = tmp_path / "grpo"
    CliRunner().invoke(app, ["train", write_config(tmp_path), f"grpo.output_dir={out}", "grpo.save_steps=1",
                             "--no-progress"])
    (out / "checkpoint-1" / "trainer_state.pt").write_bytes(b"not a torch file")
    output = user_error("train", write_config(tmp_path), f"grpo.output_dir={out}", "grpo.max_steps=2",
                        "--resume", "--no-progress")
    assert f"CheckpointError: cannot read {out / 'checkpoint-1' / 'trainer_state.pt'}" in output
    assert "the checkpoint is damaged" in output


# ------------------------------------------------------------------------- judge, torchrun


def test_an_unreachable_judge_with_on_error_raise_names_the_endpoint(tmp_path):
    judge = {"name": "judge", "base_url": "http://127.0.0.1:9/v1", "model": "m", "on_error": "raise",
             "max_retries": 0, "timeout_s": 2}
    output = user_error("train", write_config(tmp_path, rewards=[judge]), "--no-progress")
    assert "reward function 'judge' raised JudgeError" in output and "127.0.0.1:9" in output


def test_a_single_process_command_under_torchrun_is_refused_naming_the_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    output = user_error("ppo", write_config(tmp_path))
    assert "rank 1: ConfigError: grpokit ppo runs on one process; launch it without torchrun" in output


def test_a_report_of_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    output = user_error("report", tmp_path)
    assert f"{tmp_path / 'metrics.jsonl'}: line 2 is not JSON" in output


def test_summary_of_reruns_keeps_the_stage_seconds(tmp_path):
    """A rerun of a finished pipeline skips every stage; summary.json's seconds stay the stages'."""
    out = tmp_path / "pipe"
    pipe = {"output_dir": str(out), "stages": [{"name": "sft", "type": "sft", "evaluate": False}]}
    config = write_config(tmp_path, pipeline=pipe)
    assert CliRunner().invoke(app, ["pipeline", config, "--no-progress"]).exit_code == 0
    first = json.loads((out / "summary.json").read_text())["stages"][0]["seconds"]
    assert CliRunner().invoke(app, ["pipeline", config, "--no-progress"]).exit_code == 0
    assert json.loads((out / "summary.json").read_text())["stages"][0]["seconds"] == first > 0
