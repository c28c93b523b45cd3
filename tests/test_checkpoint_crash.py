"""Crash-safe checkpoints: a process killed in the middle of a save, a full disk, stale
temporary directories, and keeping only the newest checkpoints."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import transformers.modeling_utils
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from grpokit.trainers.checkpoints import PAUSE_ENV, CheckpointError, complete_checkpoints, latest_valid_checkpoint
from grpokit.cli import app
from grpokit.config import SFTConfig
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.trainers.sft import SFTTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
DEMOS = [{"prompt": f"say {i}:", "completion": f" {i}{i}"} for i in range(10)]
TOY = {"model": "embedded", "data": {"task": "digit_sum", "num_train": 32, "num_test": 4},
       "sft": {"max_steps": 6, "save_steps": 2, "per_device_train_batch_size": 4,
               "learning_rate": 1e-3, "max_length": 64}}


def sft(out, **overrides):
    tokenizer = build_char_tokenizer()
    settings = dict(output_dir=str(out), max_steps=6, save_steps=2, learning_rate=1e-2,
                    per_device_train_batch_size=4, max_length=32)
    return SFTTrainer(model=create_tiny_model(tokenizer, **TINY), args=SFTConfig(**{**settings, **overrides}),
                      train_dataset=DEMOS, processing_class=tokenizer)


def logged(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not k.startswith("time/")} for line in lines]


def wait_for_save_in_progress(out, proc, timeout=120.0):
    """The temporary directory of checkpoint-4 once its model file is written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        for tmp in out.glob("checkpoint-4.tmp-*"):
            if (tmp / "model.safetensors").is_file():
                return tmp
        time.sleep(0.05)
    raise AssertionError("checkpoint-4 was never being saved")


@pytest.mark.slow
def test_killed_while_saving_then_resumed_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY))
    out, straight = tmp_path / "killed", tmp_path / "straight"
    env = {**os.environ, PAUSE_ENV: "4:120", "OMP_NUM_THREADS": "1"}  # checkpoint-4's save sleeps
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "grpokit.cli", "sft", str(config),
                                 f"sft.output_dir={out}", "--no-progress"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            tmp = wait_for_save_in_progress(out, proc)
        finally:
            proc.kill()
            proc.wait()

    assert not (tmp / "COMPLETE").exists() and not (out / "checkpoint-4").exists()
    assert latest_valid_checkpoint(out) == out / "checkpoint-2"
    assert not tmp.exists()  # its process is gone, so the half-written directory was removed
    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")

    monkeypatch.delenv(PAUSE_ENV, raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["sft", str(config), f"sft.output_dir={out}", "--no-progress", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resumed sft from" in result.output and "checkpoint-2 (step 2)" in result.output
    result = runner.invoke(app, ["sft", str(config), f"sft.output_dir={straight}", "--no-progress"])
    assert result.exit_code == 0, result.output

    assert [line["step"] for line in logged(out)] == [1, 2, 3, 4, 5, 6]
    assert logged(out) == logged(straight)
    ours, theirs = load_file(out / "model" / "model.safetensors"), load_file(straight / "model" / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_full_disk_leaves_no_partial_checkpoint_and_the_previous_one_intact(tmp_path, monkeypatch):
    real_save = transformers.modeling_utils.safe_save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if "checkpoint-4" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write .*checkpoint-4: \[Errno 28\] No space left on "
                                              r"device; nothing of it was left behind, and the latest "
                                              r"complete checkpoint \(checkpoint-2\) is intact"):
        sft(out).train(show_progress=False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]

    monkeypatch.undo()  # space freed: the run resumes from checkpoint-2
    summary = sft(out).train(show_progress=False, resume_from_checkpoint=True)
    assert summary["steps"] == 6 and [line["step"] for line in logged(out)] == [1, 2, 3, 4, 5, 6]


def test_latest_valid_checkpoint_skips_incomplete_ones_and_removes_stale_temporaries(tmp_path):
    for name, complete in [("checkpoint-2", True), ("checkpoint-10", True), ("checkpoint-12", False)]:
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "COMPLETE").write_text("{}")
    stale = tmp_path / "checkpoint-14.tmp-999999999"  # no such process
    live = tmp_path / f"checkpoint-16.tmp-{os.getppid()}"  # a live process may still be saving
    stale.mkdir(), live.mkdir()

    assert latest_valid_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # by number, not name
    assert latest_valid_checkpoint(tmp_path, max_step=9) == tmp_path / "checkpoint-2"
    assert not stale.exists() and live.exists()


def test_a_fresh_start_moves_an_earlier_runs_checkpoints_aside_and_keeps_the_newest(tmp_path, caplog):
    out = tmp_path / "run"
    (out / "checkpoint-9").mkdir(parents=True)  # left by an earlier, longer run
    (out / "checkpoint-9" / "COMPLETE").write_text("{}")
    sft(out, save_steps=1, save_total_limit=2, max_steps=4).train(show_progress=False)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]
    [aside] = out.glob("earlier-run-*")
    assert [p.name for p in aside.iterdir()] == ["checkpoint-9"]
    assert "held checkpoints of an earlier run (checkpoint-9)" in caplog.text
