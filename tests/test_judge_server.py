"""The LLM judge against a real `transformers serve` process on loopback, serving local models.

Two model directories are built here (nothing is downloaded): a one-layer Llama wired so that
greedy decoding always replies "SCORE: 7" (so the score is known by hand), and the untrained
embedded default, whose replies are gibberish. The server starts unpinned, so each request's
``model`` (a local path) picks the model, and loads it on first use.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpokit.models import build_char_tokenizer, create_embedded_default, save_model
from grpokit.config.judge_settings import JudgeConfig
from grpokit.rewards.judge import LLMJudge, normalise_score, parse_score
from grpokit.serving.model_server import free_port

pytestmark = pytest.mark.slow  # subprocesses or the real model: run by the full suite, not by -m 'not slow'

pytest.importorskip("fastapi", reason="`transformers serve` needs the serving extras: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="`transformers serve` needs the serving extras: pip install -e '.[test]'")

STARTUP_TIMEOUT_S = 120
SCRIPTED_REPLY = "SCORE: 7"


def build_scripted_judge(path, reply: str = SCRIPTED_REPLY):
    """A Llama whose greedy continuation of any chat prompt is ``reply`` then EOS.

    Attention and MLP outputs are zero, so the last hidden state is the (normalised) embedding
    of the current token; embeddings are one-hot and the untied LM head maps each token of
    ``reply`` to the next one (the last to EOS) and every other token to the first. No
    character repeats in "SCORE: 7", so the chain is unambiguous.
    """
    tokenizer = build_char_tokenizer()
    vocab = len(tokenizer)
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config)
    chain = tokenizer.convert_tokens_to_ids(list(reply)) + [tokenizer.eos_token_id]
    successor = dict(zip(chain, chain[1:]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0 if "norm" in name else 0.0)
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, config.hidden_size))
        for token in range(vocab):
            model.lm_head.weight[successor.get(token, chain[0]), token] = 1.0
    return save_model(model, tokenizer, path)


def wait_until_healthy(process, url: str, log_path) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took. Fails if the process dies."""
    start = time.monotonic()
    while time.monotonic() - start < STARTUP_TIMEOUT_S:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited with code {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"transformers serve not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_models")
    return {"scripted": build_scripted_judge(root / "scripted"),
            "untrained": create_embedded_default(root / "untrained"),
            "missing": root / "missing"}


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory):
    """Base URL of a `transformers serve` process, killed when the module's tests are done."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve",
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        startup_s = wait_until_healthy(process, f"http://127.0.0.1:{port}/health", log_path)
        print(f"transformers serve healthy after {startup_s:.1f} s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_scripted_judge_scores_through_the_server_and_caches(serve_url, models, tmp_path):
    cache = str(tmp_path / "judge.sqlite")
    prompts = ["sum a4b7:", "sum c1d9:", "sum e2f2:"]
    completions = ["<answer>11</answer>", "<answer>10</answer>", "no idea"]
    config = dict(model=str(models["scripted"]), max_tokens=16, concurrency=2, cache_path=cache, on_error="raise")
    with LLMJudge(JudgeConfig(base_url=serve_url, **config)) as judge:
        verdicts = judge.verdicts(prompts, completions)
    assert [v["reply"] for v in verdicts] == [SCRIPTED_REPLY] * 3
    assert [(v["raw_score"], v["score"], v["cached"], v["error"]) for v in verdicts] == [(7.0, 0.7, False, None)] * 3
    # the same requests again, aimed at a port nothing listens on: only the cache can answer
    offline = JudgeConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0, **config)
    with LLMJudge(offline) as judge:
        assert judge(prompts, completions) == [0.7] * 3
        assert all(v["cached"] for v in judge.verdicts(prompts, completions))


def test_untrained_model_reply_goes_through_the_parse_path(serve_url, models):
    config = JudgeConfig(base_url=serve_url, model=str(models["untrained"]), max_tokens=12, on_error="none")
    with LLMJudge(config) as judge:
        verdicts = judge.verdicts(["sum a4b7:", "sum c1d9:"], ["<answer>11</answer>", "<answer>3</answer>"])
        rewards = judge(["sum a4b7:"], ["<answer>11</answer>"])
    for verdict in verdicts:
        assert isinstance(verdict["reply"], str) and verdict["reply"]
        raw = parse_score(verdict["reply"])  # gibberish: a stray digit or, more likely, nothing
        assert verdict["raw_score"] == raw
        if raw is None:
            assert verdict["score"] is None and verdict["error"].startswith("no score in the judge's reply")
        else:
            assert verdict["score"] == normalise_score(raw, 0, 10) and verdict["error"] is None
    assert rewards == [verdicts[0]["score"]]
    assert rewards[0] is None or 0.0 <= rewards[0] <= 1.0


def test_server_error_follows_on_error(serve_url, models):
    config = JudgeConfig(base_url=serve_url, model=str(models["missing"]), max_retries=1, backoff_s=0.0, on_error="zero")
    with LLMJudge(config) as judge:
        verdict = judge.verdicts(["p"], ["c"])[0]
        assert judge(["p"], ["c"]) == [0.0]
    assert verdict["score"] is None and verdict["error"].startswith("HTTP ")


# --------------------------------------------------- a judge the pipeline serves itself


def sample_config(tmp_path, judge: dict, **settings):
    from grpokit.config import SampleConfig

    return SampleConfig(output_dir=str(tmp_path / "sample"), num_prompts=3, num_samples=2, max_completion_length=6,
                        min_rewards={}, judge_min_score=0.5, judge=judge, **settings)


def test_served_judge_starts_scores_and_stops_with_the_stage(models, tmp_path, served_processes):
    from grpokit.recipes.rejection_sampling import rejection_sample

    scripted = build_scripted_judge(tmp_path / "says7")
    rows = [{"prompt": f"sum a{i}b7:", "answer": "7"} for i in range(3)]
    summary = rejection_sample(models["untrained"], rows, ["format"],
                               sample_config(tmp_path, {"serve": str(scripted), "serve_device": "cpu", "max_tokens": 16}),
                               show_progress=False, judge_label=lambda completion, row: True)
    judge = summary["judge"]
    assert judge["asked"] > 0 and judge["errors"] == 0 and judge["rejected"] == 0
    assert judge["agreement"]["precision"] == 1.0 and judge["agreement"]["recall"] == 1.0  # "SCORE: 7" approves all
    assert (tmp_path / "sample" / "judge_server.log").is_file()
    assert served_processes(scripted) == []


def test_a_failing_stage_stops_its_served_judge(models, tmp_path, served_processes):
    from grpokit.errors import JudgeError
    from grpokit.recipes.rejection_sampling import rejection_sample

    wordy = build_scripted_judge(tmp_path / "wordy", reply="GOD")  # no number in the reply
    rows = [{"prompt": "sum a4b7:", "answer": "11"}]
    cfg = sample_config(tmp_path, {"serve": str(wordy), "serve_device": "cpu", "max_tokens": 8, "on_error": "raise",
                                   "fallback_to_last_number": False})
    with pytest.raises(JudgeError, match="completions got no score .on_error: raise.; first: no score in the judge's reply"):
        rejection_sample(models["untrained"], rows, ["format"], cfg, show_progress=False)
    assert served_processes(wordy) == []
    assert not (tmp_path / "sample" / "sft.jsonl").exists()  # nothing half-written


def test_ctrl_c_stops_the_served_judge(tmp_path, served_processes):
    scripted = build_scripted_judge(tmp_path / "judge")
    script = ("import time\nfrom grpokit.rewards.judge import LLMJudge\n"
              f"with LLMJudge({{'serve': {str(scripted)!r}, 'serve_device': 'cpu'}}) as judge:\n"
              "    print('ready', flush=True)\n    time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert len(served_processes(scripted)) == 1
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode != 0
    deadline = time.monotonic() + 15
    while served_processes(scripted) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served_processes(scripted) == []


def test_a_judge_model_that_cannot_load_gives_a_clear_error(tmp_path, served_processes):
    from grpokit.errors import JudgeError
    from grpokit.serving.model_server import ModelServer

    broken = build_scripted_judge(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(JudgeError, match=r"judge server for .*broken (exited with code|not healthy).*its log"):
        ModelServer(broken, device="cpu", startup_timeout_s=60).start()
    assert served_processes(broken) == []
    with pytest.raises(JudgeError, match="is not a model directory"):
        ModelServer(tmp_path / "nothing-here").start()


def test_a_crashed_judge_is_a_counted_fallback_or_a_clear_error(models, tmp_path):
    from grpokit.errors import JudgeError
    from grpokit.recipes.rejection_sampling import rejection_sample
    from grpokit.serving.model_server import ModelServer

    with ModelServer(build_scripted_judge(tmp_path / "judge"), device="cpu") as server:
        dead = {"base_url": server.base_url, "model": server.model, "max_retries": 0}
    rows = [{"prompt": "sum a4b7:", "answer": "11"}, {"prompt": "sum c1:", "answer": "1"}]  # the server is gone now
    summary = rejection_sample(models["untrained"], rows, ["format"], sample_config(tmp_path, {**dead, "on_error": "zero"}),
                               show_progress=False)
    assert summary["judge"]["errors"] == summary["judge"]["asked"] > 0
    assert summary["judge"]["rejected"] == summary["sampled"] - summary["rejected_by"].get("empty", 0) > 0
    assert "no response from" in summary["judge"]["first_error"]
    with pytest.raises(JudgeError, match="no response from http://127.0.0.1"):
        rejection_sample(models["untrained"], rows, ["format"], sample_config(tmp_path, {**dead, "on_error": "raise"}),
                         show_progress=False)


def test_the_api_key_never_reaches_files_or_output(models, tmp_path, monkeypatch, capfd):
    from grpokit.config import RunConfig, validate
    from grpokit.recipes.stages import run_sample

    secret = "sk-test-4f9a1c0ffee"
    monkeypatch.setenv("TEST_JUDGE_KEY", secret)
    with __import__("grpokit.serving.model_server", fromlist=["ModelServer"]).ModelServer(
            build_scripted_judge(tmp_path / "judge"), device="cpu", log_path=tmp_path / "sample" / "server.log") as server:
        cfg = validate(RunConfig, {"data": {"task": "digit_sum", "num_train": 6, "num_test": 2},
                                   "rewards": ["format"],
                                   "sample": {"output_dir": str(tmp_path / "sample"), "num_prompts": 3,
                                              "num_samples": 2, "max_completion_length": 6, "min_rewards": {},
                                              "judge": {"base_url": server.base_url, "model": server.model,
                                                        "api_key_env": "TEST_JUDGE_KEY", "max_tokens": 16}}}, "test")
        run_sample(cfg, models["untrained"], show_progress=False)
    written = [p for p in (tmp_path / "sample").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"sft.jsonl", "summary.json", "run_config.yaml", "server.log"}
    assert all(secret not in p.read_text(errors="replace") for p in written)
    assert "TEST_JUDGE_KEY" in (tmp_path / "sample" / "run_config.yaml").read_text()  # the variable's name only
    out, err = capfd.readouterr()
    assert secret not in out + err
