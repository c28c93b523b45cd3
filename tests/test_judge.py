"""LLM judge reward against a real loopback HTTP server that we script per test."""

import functools
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grpokit.rewards import resolve_reward, reward_name, score_completions
from grpokit.config.judge_settings import JudgeConfig
from grpokit.rewards.judge import JudgeError, LLMJudge, judge_for_config, normalise_score, parse_score

KEY = "sk-test-5ecret-value"


class ScriptedServer(ThreadingHTTPServer):
    """Chat-completions stand-in: pops one action per request from ``script``, else echoes.

    Actions: ``("status", code)`` answers with that HTTP error (its body echoes the request's
    Authorization header, as a careless proxy might); ``("sleep", seconds)`` waits, then echoes;
    ``("reply", text)`` answers ``text``; ``("raw", bytes)`` answers those bytes with 200.
    The echo reply is ``"SCORE: " + the user message``, so a rubric of ``{completion}`` makes
    completion "7" score 7.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        """A client that timed out closed the socket before the late reply; that is expected."""


class ScriptedHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            kind, value = self.server.script.pop(0) if self.server.script else ("echo", None)
        if kind == "status":
            self._send(value, json.dumps({"error": "scripted", "authorization": self.headers.get("Authorization")}).encode())
            return
        if kind == "raw":
            self._send(200, value)
            return
        if kind == "sleep":
            time.sleep(value)
        text = value if kind == "reply" else "SCORE: " + body["messages"][0]["content"]
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode())

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def make_judge(server, **overrides):
    options = dict(base_url=server.url, model="tiny-judge", rubric="{completion}", backoff_s=0.0, timeout_s=5.0)
    return LLMJudge(JudgeConfig(**{**options, **overrides}))


# ------------------------------------------------------------------ parsing and scaling


def test_parse_score_pattern_fallback_and_groupless_patterns():
    assert parse_score("Fine work.\nSCORE: 9") == 9.0
    assert parse_score("score: 2 ... revised SCORE:5.5") == 5.5  # the last match counts
    assert parse_score("It deserves 3 out of 5 points, so 3") == 3.0  # fallback: last number
    assert parse_score("VERDICT 4", pattern=r"VERDICT (\w+)") == 4.0
    assert parse_score("8/10", pattern=r"\d+(?=/10)") == 8.0  # no group: the whole match
    assert parse_score("VERDICT good", pattern=r"VERDICT (\w+)", fallback_to_last_number=False) is None
    assert parse_score("nothing numeric") is None


def test_normalise_score_maps_range_and_clips():
    assert normalise_score(7, 0, 10) == pytest.approx(0.7)
    assert normalise_score(3, 1, 5) == pytest.approx(0.5)  # (3 - 1) / (5 - 1)
    assert normalise_score(-2, 0, 10) == 0.0
    assert normalise_score(11, 0, 10) == 1.0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(rubric="Grade {response}"), "unknown placeholder(s) ['response']"),
        (dict(rubric="Grade {prompt}"), "no {completion} placeholder"),
        (dict(rubric="Grade {completion} as {"), "not a valid template"),
        (dict(score_pattern="SCORE: ("), "not a valid regex"),
        (dict(min_score=5, max_score=1), "max_score (1.0) must be greater than min_score (5.0)"),
        (dict(base_url="127.0.0.1:8000/v1"), "must start with http://"),
        (dict(on_error="skip"), "on_error"),
    ],
)
def test_config_errors_name_the_key(options, message):
    with pytest.raises(ValueError) as info:
        JudgeConfig(**{"base_url": "http://127.0.0.1:1/v1", "model": "m", **options})
    assert message in str(info.value)


def test_judge_has_the_trl_name():
    with LLMJudge(dict(base_url="http://127.0.0.1:1/v1", model="m")) as judge:
        assert judge.__name__ == "judge" and reward_name(judge) == "judge"


# ------------------------------------------------------------------------ requests


def test_scores_stay_with_their_samples_under_concurrency(server):
    completions = ["7", "3", "10", "0", "2.5", "7"]
    with make_judge(server, concurrency=3, max_tokens=32) as judge:
        rewards = judge(["p"] * len(completions), completions)
    assert rewards == pytest.approx([0.7, 0.3, 1.0, 0.0, 0.25, 0.7])
    assert len(server.requests) == 5  # the two identical samples share one request
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["body"]["model"] == "tiny-judge"
    assert first["body"]["temperature"] == 0.0 and first["body"]["max_tokens"] == 32
    assert "Authorization" not in first["headers"]


def test_rubric_renders_prompt_completion_and_answer(server):
    rubric = "Q: {prompt}\nA: {completion}\nRef: {answer}\nSCORE?"
    chat_prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    chat_completion = [{"role": "assistant", "content": "4"}]
    server.script = [("reply", "SCORE: 10")]
    with make_judge(server, rubric=rubric, on_error="zero") as judge:
        verdicts = judge.verdicts([chat_prompt, "3+3?"], [chat_completion, "6"], answer=["4", None])
    assert [r["body"]["messages"] for r in server.requests] == [
        [{"role": "user", "content": "Q: system: Be brief.\n\nuser: 2+2?\nA: 4\nRef: 4\nSCORE?"}]
    ]
    assert verdicts[0] == {"score": 1.0, "raw_score": 10.0, "reply": "SCORE: 10", "cached": False, "error": None}
    # no answer: not sent, and the reward does not apply whatever on_error says
    assert verdicts[1] == {"score": None, "raw_score": None, "reply": None, "cached": False, "error": None}


def test_answer_rubric_without_answer_column_is_an_error(server):
    with make_judge(server, rubric="{completion} vs {answer}") as judge:
        with pytest.raises(ValueError, match="no 'answer' column"):
            judge(["p"], ["1"])
        with pytest.raises(ValueError, match="1 answers but 2 completions"):
            judge(["p", "p"], ["1", "2"], answer=["1"])


def test_api_key_is_sent_from_env_and_never_shown(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    with make_judge(server, api_key_env="JUDGE_TEST_KEY", on_error="raise") as judge:
        assert judge(["p"], ["6"]) == [pytest.approx(0.6)]
        server.script = [("status", 400)]  # the error body echoes the Authorization header
        with pytest.raises(JudgeError) as info:
            judge(["p"], ["8"])
        shown = [repr(judge), repr(judge.config), str(judge.config), str(info.value), repr(info.value)]
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "HTTP 400" in str(info.value) and "Bearer ***" in str(info.value)
    assert not any(KEY in text for text in shown)


def test_api_key_env_errors_never_show_a_key(monkeypatch):
    monkeypatch.delenv("JUDGE_MISSING_KEY", raising=False)
    with pytest.raises(JudgeError, match="environment variable 'JUDGE_MISSING_KEY' is not set"):
        LLMJudge(dict(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="JUDGE_MISSING_KEY"))
    with pytest.raises(ValueError) as info:  # the key pasted where its variable's name belongs
        JudgeConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=KEY)
    assert "NAME of an environment variable" in str(info.value) and KEY not in str(info.value)


# --------------------------------------------------------------------------- caching


def test_cache_hits_make_no_request(server, tmp_path):
    cache = str(tmp_path / "judge.sqlite")
    with make_judge(server, cache_path=cache) as judge:
        assert judge(["p", "p"], ["7", "4"]) == pytest.approx([0.7, 0.4])
    assert len(server.requests) == 2
    with make_judge(server, cache_path=cache) as judge:  # a new judge (a new run) on the same file
        verdicts = judge.verdicts(["p", "p"], ["7", "4"])
        rescaled = make_judge(server, cache_path=cache, max_score=5.0)
        assert rescaled(["p", "p"], ["7", "4"]) == pytest.approx([1.0, 0.8])  # 7 clipped; 4 / 5
        rescaled.close()
    assert len(server.requests) == 2
    assert [(v["score"], v["cached"]) for v in verdicts] == [(pytest.approx(0.7), True), (pytest.approx(0.4), True)]
    with make_judge(server, cache_path=cache, rubric="{completion}.0") as judge:  # a new rubric misses
        assert judge(["p"], ["7"]) == pytest.approx([0.7])
    assert len(server.requests) == 3


def test_failed_requests_are_not_cached(server, tmp_path):
    server.script = [("status", 400)]
    with make_judge(server, cache_path=str(tmp_path / "c.sqlite")) as judge:
        assert judge(["p"], ["5"]) == [None]
        assert judge(["p"], ["5"]) == pytest.approx([0.5])
    assert len(server.requests) == 2


# -------------------------------------------------------------------- retries and errors


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retryable_status_is_retried_until_success(server, status):
    server.script = [("status", status), ("status", status)]
    with make_judge(server, max_retries=2) as judge:
        verdicts = judge.verdicts(["p"], ["9"])
    assert verdicts[0]["score"] == pytest.approx(0.9) and verdicts[0]["error"] is None
    assert len(server.requests) == 3


@pytest.mark.parametrize("on_error, expected", [("none", [None, 0.2]), ("zero", [0.0, 0.2])])
def test_exhausted_retries_follow_on_error(server, on_error, expected):
    server.script = [("status", 503)] * 2  # both attempts of the first sample
    with make_judge(server, max_retries=1, concurrency=1, on_error=on_error) as judge:
        verdicts = judge.verdicts(["p", "p"], ["5", "2"])
        server.script = [("status", 503)] * 2
        rewards = judge(["p", "p"], ["5", "2"])
    assert "HTTP 503" in verdicts[0]["error"] and "gave up after 2 attempt(s)" in verdicts[0]["error"]
    assert rewards == [None if e is None else pytest.approx(e) for e in expected]
    assert len(server.requests) == 6  # (2 attempts + 1) per call


def test_on_error_raise_reports_the_failed_sample(server):
    server.script = [("status", 502)] * 3
    with make_judge(server, max_retries=2, on_error="raise") as judge:
        with pytest.raises(JudgeError, match=r"1 of 1 samples got no score; first, sample 0: HTTP 502"):
            judge(["p"], ["5"])
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(server, status):
    server.script = [("status", status)]
    with make_judge(server, max_retries=3) as judge:
        verdicts = judge.verdicts(["p"], ["5"])
    assert f"HTTP {status}" in verdicts[0]["error"] and "(not retried)" in verdicts[0]["error"]
    assert len(server.requests) == 1


def test_timeout_fails_the_attempt_and_is_retried(server):
    server.script = [("sleep", 1.0)]
    with make_judge(server, timeout_s=0.2, max_retries=0) as judge:
        error = judge.verdicts(["p"], ["5"])[0]["error"]
    assert "timed out" in error and "gave up after 1 attempt(s)" in error
    server.script = [("sleep", 1.0)]
    with make_judge(server, timeout_s=0.2, max_retries=1) as judge:
        assert judge(["p"], ["5"]) == pytest.approx([0.5])
    assert len(server.requests) == 3


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as probe:  # a port that nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff_s=0.0)
    with LLMJudge(config) as judge:
        error = judge.verdicts(["p"], ["5"])[0]["error"]
    assert error.startswith(f"no response from http://127.0.0.1:{port}/v1/chat/completions")
    assert "gave up after 2 attempt(s)" in error


def test_reply_without_a_number_is_unscored(server):
    server.script = [("reply", "I cannot decide."), ("reply", "I cannot decide.")]
    with make_judge(server, on_error="zero") as judge:
        verdict = judge.verdicts(["p"], ["5"])[0]
        assert judge(["p"], ["5"]) == [0.0]
    assert verdict["reply"] == "I cannot decide." and verdict["raw_score"] is None
    assert verdict["error"].startswith("no score in the judge's reply 'I cannot decide.'")


def test_malformed_response_is_not_retried(server):
    server.script = [("raw", b"<html>proxy login</html>")]
    with make_judge(server, max_retries=3) as judge:
        error = judge.verdicts(["p"], ["5"])[0]["error"]
    assert error.startswith("unexpected response b'<html>proxy login</html>'") and "(not retried)" in error
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- registry


def test_registered_judge_works_as_a_yaml_reward(server):
    options = dict(base_url=server.url, model="tiny-judge", rubric="{completion} ({answer})",
                   score_pattern=r"SCORE: (\d+)", backoff_s=0.0)
    reward = functools.partial(resolve_reward("judge"), **options)  # what a YAML mapping becomes
    batch = score_completions([reward], prompts=["a", "b"], completions=["8", "3", "6", "1"],
                              completion_ids=[[1], [2], [3], [4]], columns={"answer": ["x", None]})
    assert batch.names == ["judge"]
    assert batch.per_func[:, 0].tolist()[:2] == pytest.approx([0.8, 0.3])
    assert batch.per_func[2:, 0].isnan().all()  # prompt b has no answer
    assert judge_for_config(JudgeConfig(**options)) is judge_for_config(JudgeConfig(**options))
