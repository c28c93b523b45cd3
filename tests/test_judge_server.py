"""The LLM judge against a real `transformers serve` process on loopback, serving local models.

Two model directories are built here (nothing is downloaded): a one-layer Llama wired so that
greedy decoding always replies "SCORE: 7" (so the score is known by hand), and the untrained
embedded default, whose replies are gibberish. The server starts unpinned, so each request's
``model`` (a local path) picks the model, and loads it on first use.
"""

import os
import socket
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
