"""Training as two processes under torchrun (gloo on CPU), compared with one process.

- DDP: the weights after every step equal those of a one-process run with the same global
  batch and seed (GRPO with a KL term, global advantage scaling and DAPO's global token
  normaliser; SFT with the per-device batch split over ranks).
- FSDP2: trains and checkpoints; the checkpoint loads in one process, and a one-process resume
  from it continues the run.
- A rank killed mid-run: the other stops with a clear message within seconds, and --resume
  continues from the last checkpoint.
- A pipeline (sft -> grpo -> rejection sampling -> sft) runs as two processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from grpokit.algorithms import group_advantages
from grpokit.parallel.ranks import Ranks, combine_metrics, local_only, ranks
from grpokit.sampling.sampler import SamplingParams, generate, random_table

pytestmark = pytest.mark.slow  # subprocesses or the real model: run by the full suite, not by -m 'not slow'

GRPO_CONFIG = {
    "model": "embedded",
    "data": {"task": "digit_sum", "num_train": 200, "num_test": 20},
    "rewards": [{"name": "length_penalty", "target_length": 4, "max_length": 24}],
    "grpo": {"learning_rate": 1.0e-3, "prompts_per_step": 4, "num_generations": 4,
             "micro_batch_size": 4, "max_steps": 3, "max_completion_length": 24, "beta": 0.04,
             "loss_type": "dapo", "scale_rewards": "batch", "save_steps": 1},
}
SFT_CONFIG = {
    "model": "embedded",
    "data": {"task": "digit_sum", "num_train": 64, "num_test": 8},
    "sft": {"learning_rate": 5.0e-3, "per_device_train_batch_size": 4, "max_steps": 3,
            "max_length": 96, "save_steps": 1},
}


def write_config(directory: Path, tree: dict) -> Path:
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def grpokit(*args: str, processes: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m grpokit ARGS``, or the same under ``torchrun --nproc_per_node=processes``."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "grpokit", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_ok(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    result = grpokit(*args, processes=processes)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[name] - b[name]).abs().max().item() for name in a)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory):
    """One-process GRPO, the same as two DDP processes and as two FSDP2 processes."""
    root = tmp_path_factory.mktemp("grpo")
    config = write_config(root, GRPO_CONFIG)
    runs = {name: root / name for name in ("single", "ddp", "fsdp2")}
    run_ok("train", str(config), f"grpo.output_dir={runs['single']}")
    run_ok("train", str(config), f"grpo.output_dir={runs['ddp']}", processes=2)
    run_ok("train", str(config), f"grpo.output_dir={runs['fsdp2']}", "grpo.distributed=fsdp2", processes=2)
    return config, runs


def test_ddp_grpo_takes_the_steps_of_one_process(grpo_runs):
    _, runs = grpo_runs
    first = weights(runs["single"] / "checkpoint-1")
    for step in (1, 2, 3):
        single, ddp = (weights(runs[name] / f"checkpoint-{step}") for name in ("single", "ddp"))
        assert max_difference(single, ddp) < 1e-5, step  # measured: 3.9e-7
    # the steps are real: the weights move by ~1e-3 a step (Adam at lr 1e-3)
    assert max_difference(first, weights(runs["single"] / "checkpoint-3")) > 1e-3
    # metrics are reduced over ranks: means equal the one-process ones, extremes too
    for one, two in zip(metrics(runs["single"]), metrics(runs["ddp"]), strict=True):
        for key in ("reward/mean", "loss", "kl", "completion/mean_length", "completion/min_length",
                    "completion/max_length", "advantage/max"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key


def test_fsdp2_trains_checkpoints_and_its_checkpoint_loads_in_one_process(grpo_runs, tmp_path):
    config, runs = grpo_runs
    for step in (1, 2, 3):
        single, sharded = (weights(runs[name] / f"checkpoint-{step}") for name in ("single", "fsdp2"))
        # FSDP2 computes log-probs through the model's own forward (logits) rather than the
        # fused head; Adam's first steps amplify that rounding (measured: 1.4e-5)
        assert max_difference(single, sharded) < 1e-4, step
    for directory in (runs["fsdp2"] / "checkpoint-3", runs["fsdp2"] / "model"):
        model = AutoModelForCausalLM.from_pretrained(directory)
        assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    # one process resumes the FSDP2 run from its step-2 checkpoint (weights and optimizer)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint-1", "checkpoint-2"):
        os.symlink(runs["fsdp2"] / name, resumed / name)
    result = run_ok("train", str(config), f"grpo.output_dir={resumed}", "--resume")
    assert "resumed grpo from" in result.stdout and "(step 2)" in result.stdout
    assert max_difference(weights(resumed / "checkpoint-3"),
                          weights(runs["fsdp2"] / "checkpoint-3")) < 1e-6  # measured: 6e-8


def test_ddp_sft_splits_the_global_batch(tmp_path):
    """Two processes of 2 demonstrations each take the steps of one process with 4."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_ok("sft", str(write_config(tmp_path, SFT_CONFIG)), f"sft.output_dir={single}")
    run_ok("sft", str(tmp_path / "config.yaml"), f"sft.output_dir={ddp}",
           "sft.per_device_train_batch_size=2", processes=2)
    for step in (1, 2, 3):
        # measured 2.4e-5 on one machine of this kind and under 1e-5 on another: Adam's first
        # update, lr * g / (|g| + eps), magnifies the all-reduce's rounding of gradients near eps;
        # 1e-4 is 2 % of one step's movement at lr 5e-3
        assert max_difference(weights(single / f"checkpoint-{step}"),
                              weights(ddp / f"checkpoint-{step}")) < 1e-4, step
    losses = [[m["train/loss"] for m in metrics(run)] for run in (single, ddp)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def worker_pids(output_dir: Path) -> dict[int, int]:
    """RANK -> pid of the torchrun workers writing to ``output_dir``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"grpo.output_dir={output_dir}".encode() in cmdline and b"torch.distributed.run" not in cmdline:
            for entry in environ:
                if entry.startswith(b"RANK="):
                    found[int(entry[5:])] = int(proc.name)
    return found


def test_a_killed_rank_stops_the_run_quickly_and_resume_continues(tmp_path):
    config = write_config(tmp_path, GRPO_CONFIG)
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "grpokit", "train", str(config), f"grpo.output_dir={out}",
               "grpo.max_steps=200", "grpo.save_steps=2", "grpo.distributed_timeout=30", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoint-2" / "COMPLETE").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint-2"
            time.sleep(0.2)
        pids = worker_pids(out)
        assert sorted(pids) == [0, 1]
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        output, _ = proc.communicate(timeout=90)  # bounded: no hang
        stopped_after = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert stopped_after < 60  # measured: 0.7-3.1 s (torchrun stops the rest at once)
    assert "Signal 9 (SIGKILL) received by PID" in output  # torchrun's report names the root cause
    assert "rank 0: " in output or "SIGTERM" in output  # and rank 0 was told to stop
    assert not list(out.glob("checkpoint-*.tmp-*")) and (out / "checkpoint-2" / "COMPLETE").exists()

    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "COMPLETE").exists())
    result = run_ok("train", str(config), f"grpo.output_dir={out}", f"grpo.max_steps={last + 2}",
                    "grpo.save_steps=2", "--resume", processes=2)
    assert f"resumed grpo from {out / f'checkpoint-{last}'} (step {last})" in result.stdout
    assert [m["step"] for m in metrics(out)] == list(range(1, last + 3))
    assert json.loads((out / "summary.json").read_text())["steps"] == last + 2


def test_pipeline_runs_as_two_processes(tmp_path):
    tree = {**GRPO_CONFIG,
            "data": {"task": "digit_sum", "num_train": 64, "num_test": 8},
            "rewards": ["format", {"name": "length_penalty", "target_length": 30, "max_length": 60}],
            "sft": {"per_device_train_batch_size": 4, "max_steps": 3, "max_length": 96},
            "grpo": {"prompts_per_step": 4, "num_generations": 4, "max_steps": 2, "max_completion_length": 40},
            "sample": {"num_prompts": 8, "num_samples": 2, "max_completion_length": 40, "min_rewards": {}},
            "eval": {"num_samples": 2, "num_problems": 8, "max_completion_length": 40},
            "pipeline": {"output_dir": str(tmp_path / "pipe"), "stages": [
                {"name": "sft", "type": "sft"}, {"name": "grpo", "type": "grpo"},
                {"name": "sample", "type": "rejection_sample"},
                {"name": "sft2", "type": "sft", "data_from": "sample"}]}}
    result = run_ok("pipeline", str(write_config(tmp_path, tree)), processes=2)
    assert result.stdout.count("stage 1/4 sft") == 1  # rank 0 speaks
    summary = json.loads((tmp_path / "pipe" / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["sft", "grpo", "sample", "sft2"]
    assert all(s["eval"]["num_problems"] == 8 for s in summary["stages"] if s["type"] != "rejection_sample")
    assert len(metrics(tmp_path / "pipe" / "grpo")) == 2


def test_single_process_commands_refuse_torchrun(tmp_path):
    result = grpokit("rm", str(write_config(tmp_path, SFT_CONFIG)), processes=2)
    assert result.returncode != 0
    assert "grpokit rm runs on one process" in result.stderr


# ------------------------------------------------------------------------ in one process


def test_a_rows_samples_do_not_depend_on_the_rest_of_the_batch(varied_model, char_tokenizer):
    """What makes ranks sample what one process would: row i uses row i of the random table."""
    prompts = [char_tokenizer(p)["input_ids"] for p in ("sum a1:", "sum b22c3:", "x", "sum q9:")]
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    table = random_table(len(prompts) * 3, 12, torch.Generator().manual_seed(7))
    eos, pad = char_tokenizer.eos_token_id, char_tokenizer.pad_token_id
    whole = generate(varied_model, prompts, 3, params, eos, pad, uniforms=table)
    halves = [generate(varied_model, prompts[i : i + 2], 3, params, eos, pad, uniforms=table[3 * i : 3 * i + 6])
              for i in (0, 2)]
    assert whole.token_lists() == halves[0].token_lists() + halves[1].token_lists()
    assert len(set(map(tuple, whole.token_lists()))) > 3  # really sampled, not one repeated text


def test_lockstep_decoding_goes_on_until_every_process_is_done(varied_model, char_tokenizer):
    """keep_decoding: a process whose rows finished keeps running forwards while others decode,
    and its completions are unchanged."""
    prompts = [char_tokenizer("sum a1:")["input_ids"]]
    params, eos, pad = SamplingParams(max_new_tokens=30, temperature=0.0), char_tokenizer.eos_token_id, 0
    alone = generate(varied_model, prompts, 2, params, eos, pad)
    asked = []
    others_busy_until = 25

    def keep_decoding(done):
        asked.append(done)
        return len(asked) < others_busy_until  # the other process still decodes

    together = generate(varied_model, prompts, 2, params, eos, pad, keep_decoding=keep_decoding)
    assert together.token_lists() == alone.token_lists()
    assert len(asked) == others_busy_until


def test_ranks_split_batches_evenly_and_say_so_otherwise():
    assert Ranks(0, 2).shard([1, 2, 3, 4]) == [1, 2] and Ranks(1, 2).shard([1, 2, 3, 4]) == [3, 4]
    assert Ranks(1, 2).row_offset(8) == 8 and Ranks(1, 2).grad_scale == 2.0
    with pytest.raises(ValueError, match="cannot be split evenly over 2 processes"):
        Ranks(0, 2).shard([1, 2, 3])
    with local_only():
        assert ranks() == Ranks()


def test_metrics_combine_by_kind():
    combined = combine_metrics([
        {"reward/mean": 1.0, "completion/min_length": 3.0, "advantage/max": 1.0, "time/step": 2.0,
         "completion_tokens_per_s": 100.0, "text/completions": "rank 0"},
        {"reward/mean": 0.0, "completion/min_length": 5.0, "advantage/max": 2.0, "time/step": 3.0,
         "completion_tokens_per_s": 50.0, "text/completions": "rank 1"},
    ])
    assert combined == {"reward/mean": 0.5, "completion/min_length": 3.0, "advantage/max": 2.0,
                        "time/step": 3.0, "completion_tokens_per_s": 150.0, "text/completions": "rank 0"}


@pytest.mark.parametrize("scale", ["group", "none"])
def test_a_ranks_whole_groups_give_the_global_advantages_without_communication(scale):
    """Under torchrun each rank computes its groups' advantages alone unless scale is 'batch'."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.0, 2.0, 3.0, 1.0, 1.0, 1.0])  # 3 groups of 4
    everything = group_advantages(rewards, 4, scale)
    for rank in Ranks(0, 3), Ranks(1, 3), Ranks(2, 3):
        first = rank.row_offset(4)
        assert torch.equal(group_advantages(rewards[first:first + 4], 4, scale), everything[first:first + 4])
    # 'batch' divides by the std of every rank's rewards, so a rank's share alone differs
    assert not torch.allclose(group_advantages(rewards[:4], 4, "batch"), group_advantages(rewards, 4, "batch")[:4])


def test_multi_turn_grpo_with_tools_runs_as_two_processes_with_whole_groups(tmp_path):
    tree = {"model": "embedded", "data": {"task": "multiply_tool", "num_train": 64, "num_test": 8},
            "rewards": ["correctness"],
            "grpo": {"prompts_per_step": 4, "num_generations": 2, "micro_batch_size": 4, "max_steps": 2,
                     "max_completion_length": 48, "max_tool_calling_iterations": 1, "save_steps": 1,
                     "output_dir": str(tmp_path / "grpo")}}
    run_ok("train", str(write_config(tmp_path, tree)), processes=2)
    rows = metrics(tmp_path / "grpo")
    assert len(rows) == 2 and all("agent/turns_mean" in row and "time/environment" in row for row in rows)
    # both ranks stepped the same model: the checkpoint is one model that loads in one process
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "grpo" / "checkpoint-2") is not None
