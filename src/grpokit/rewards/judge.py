"""An LLM judge as a reward: any OpenAI-compatible chat-completions server scores completions.

Each (prompt, completion[, answer]) is written into a rubric, sent as one user message, and the
judge's reply is parsed for a number (``SCORE: 7``) that is mapped from
``[min_score, max_score]`` to ``[0, 1]``. Requests run concurrently in a thread pool, failed
requests are retried with exponential backoff, and replies can be cached on disk, so a rerun or a
repeated sample costs nothing. In a YAML config::

    rewards:
      - name: judge
        base_url: http://127.0.0.1:8000/v1
        model: Qwen/Qwen2.5-7B-Instruct
        api_key_env: JUDGE_API_KEY        # the variable's NAME; the key never goes in a config
        cache_path: runs/judge_cache.sqlite

or, with ``serve: path/to/model_dir`` instead of ``base_url``, grpokit serves a local model itself
(:mod:`grpokit.serving.model_server`) for as long as the judge is used.

A sample whose judge request fails after its retries, or whose reply holds no number, gets the
``on_error`` reward: None (the reward does not apply), 0.0, or an exception.
"""

from __future__ import annotations

import atexit
import hashlib
import http.client
import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from grpokit.config import validate
from grpokit.config.judge_settings import DEFAULT_SCORE_PATTERN, JudgeConfig, rubric_fields
from grpokit.errors import JudgeError
from grpokit.parallel.ranks import ranks
from grpokit.rewards.judge_cache import ReplyCache
from grpokit.answers import completion_text
from grpokit.rewards.lookup import register_reward
from grpokit.serving.model_server import ModelServer

__all__ = [
    "JudgeError",
    "LLMJudge",
    "backoff_delay",
    "close_shared_judges",
    "judge_for_config",
    "judge_reward",
    "normalise_score",
    "parse_score",
    "reply_text",
]

_ANY_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ERROR_BODY_CHARS = 300


# ------------------------------------------------------------------------ pure helpers


def parse_score(reply: str, pattern: str = DEFAULT_SCORE_PATTERN, fallback_to_last_number: bool = True) -> float | None:
    """The score in a judge's reply: the last match of ``pattern``, else the last number, else None.

    >>> parse_score("Correct but terse. SCORE: 8.5")
    8.5
    >>> parse_score("First guess score: 3. On reflection, Score = 6")
    6.0
    >>> parse_score("I would give it a 4.")
    4.0
    >>> parse_score("I would give it a 4.", fallback_to_last_number=False) is None
    True
    >>> parse_score("no digits at all") is None
    True
    """
    matches = list(re.finditer(pattern, reply))
    if matches:
        last = matches[-1]
        text = last.group(1) if last.re.groups else last.group(0)
        try:
            return float(text)
        except ValueError:
            return None
    if fallback_to_last_number:
        numbers = _ANY_NUMBER.findall(reply)
        return float(numbers[-1]) if numbers else None
    return None


def normalise_score(score: float, min_score: float, max_score: float) -> float:
    """Map ``score`` from ``[min_score, max_score]`` to ``[0, 1]``, clipping outside values.

    >>> normalise_score(7, 0, 10), normalise_score(4, 1, 5), normalise_score(12, 0, 10)
    (0.7, 0.75, 1.0)
    """
    return min(1.0, max(0.0, (score - min_score) / (max_score - min_score)))


def backoff_delay(attempt: int, backoff_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``backoff_s * 2**attempt * U[0.5, 1.5)``.

    With ``rng.random() == 0.844...`` (seed 0) the factor is 1.344...:

    >>> [round(backoff_delay(k, 1.0, random.Random(0)), 3) for k in range(3)]
    [1.344, 2.689, 5.378]
    """
    return backoff_s * 2**attempt * (0.5 + rng.random())


def reply_text(payload: bytes) -> str:
    """The first choice's message text from a chat-completions response body ('' for null content).

    >>> reply_text(b'{"choices": [{"message": {"role": "assistant", "content": "SCORE: 7"}}]}')
    'SCORE: 7'
    """
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        raise _RequestError(
            f"unexpected response {payload[:_ERROR_BODY_CHARS]!r}; expected chat-completions JSON "
            f"with choices[0].message.content", retryable=False
        ) from None
    return content or ""


def prompt_text(prompt: Any) -> str:
    """A prompt as text; a chat prompt becomes ``role: content`` blocks.

    >>> prompt_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}])
    'system: Be brief.\\n\\nuser: 2+2?'
    """
    if isinstance(prompt, list):
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt)


# ----------------------------------------------------------------------------- the judge


class _RequestError(JudgeError):
    """One failed HTTP attempt; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class LLMJudge:
    """A TRL reward function backed by an OpenAI-compatible chat-completions server.

    ``judge(prompts, completions, **kwargs)`` returns one reward in [0, 1] (or None) per
    completion; :meth:`verdicts` returns the details behind them. Use as a context manager, or
    call :meth:`close`, to stop its threads and close its cache.
    """

    def __init__(self, config: JudgeConfig | dict[str, Any], server_log: str | Path | None = None):
        self.config = config if isinstance(config, JudgeConfig) else validate(JudgeConfig, dict(config), "judge")
        self.__name__ = "judge"
        self._api_key = _read_api_key(self.config.api_key_env)
        self._server = None
        if self.config.serve:  # its own server, for the judge's lifetime
            self._server = ModelServer(self.config.serve, self.config.serve_device, server_log)
            self._server.start()
            self.config = self.config.model_copy(update={"model": self.config.model or self._server.model})
        self.base_url = self._server.base_url if self._server else self.config.base_url
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._uses_answer = "answer" in rubric_fields(self.config.rubric)
        self._cache = ReplyCache(self.config.cache_path) if self.config.cache_path else None
        self._pool = None  # started on first use, once the process knows how many ranks share the limit
        self._rng = random.Random()

    def pool(self) -> ThreadPoolExecutor:
        """The request threads: this rank's share of ``concurrency``."""
        if self._pool is None:
            workers = rank_share(self.config.concurrency, ranks().world_size)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
        return self._pool

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.config.model!r}, base_url={self.base_url!r})"

    def __enter__(self) -> "LLMJudge":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Wait for running requests, stop the threads, close the cache and stop the served model
        (with ``serve``); safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float | None]:
        """Rewards in [0, 1], one per completion; unscored samples follow ``on_error``."""
        verdicts = self.verdicts(prompts, completions, **kwargs)
        failed = [(i, v["error"]) for i, v in enumerate(verdicts) if v["error"] is not None]
        if failed and self.config.on_error == "raise":
            index, error = failed[0]
            raise JudgeError(f"judge {self.config.model!r}: {len(failed)} of {len(verdicts)} samples got no "
                             f"score; first, sample {index}: {error}")
        fallback = 0.0 if self.config.on_error == "zero" else None
        return [v["score"] if v["error"] is None else fallback for v in verdicts]

    def verdicts(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[dict[str, Any]]:
        """Per-sample ``{score, raw_score, reply, cached, error}``.

        ``score`` is the normalised reward (None when unscored), ``raw_score`` the number parsed
        from ``reply``, ``cached`` whether the reply came from the cache, ``error`` why the sample
        got no score (None when it did). With an ``{answer}`` rubric, samples whose answer is
        None are not sent and get all-None fields.
        """
        bodies = self._request_bodies(prompts, completions, kwargs)
        keys = [None if body is None else hashlib.sha256(body).hexdigest() for body in bodies]
        wanted = {key: body for key, body in zip(keys, bodies) if key is not None}
        cached = self._cache.get_many(wanted) if self._cache is not None else {}
        futures = {key: self.pool().submit(self._ask, body) for key, body in wanted.items() if key not in cached}
        fresh = {key: future.result() for key, future in futures.items()}  # key -> (reply, error)
        if self._cache is not None:
            self._cache.put_many({key: reply for key, (reply, error) in fresh.items() if error is None})
        return [self._verdict(cached, fresh, key) for key in keys]

    # ------------------------------------------------------------------------- internals

    def _request_bodies(self, prompts, completions, kwargs) -> list[bytes | None]:
        """One JSON request body per sample (None for samples without a needed answer)."""
        if len(prompts) != len(completions):
            raise ValueError(f"judge: {len(prompts)} prompts but {len(completions)} completions; expected one prompt per completion")
        answers = kwargs.get("answer") if self._uses_answer else [""] * len(completions)
        if answers is None:
            raise ValueError("judge: the rubric uses {answer} but the batch has no 'answer' column; "
                             "add an answer column to the dataset or remove {answer} from the rubric")
        if len(answers) != len(completions):
            raise ValueError(f"judge: {len(answers)} answers but {len(completions)} completions; expected one answer per completion")
        bodies = []
        for prompt, completion, answer in zip(prompts, completions, answers):
            if answer is None:
                bodies.append(None)
                continue
            content = self.config.rubric.format(
                prompt=prompt_text(prompt), completion=completion_text(completion), answer=answer
            )
            body = {
                "model": self.config.model,
                "messages": [{"role": "user", "content": content}],
                "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens,
            }
            bodies.append(json.dumps(body, sort_keys=True).encode())
        return bodies

    def _ask(self, body: bytes) -> tuple[str | None, str | None]:
        """``(reply, None)`` or ``(None, error message)`` after up to ``max_retries`` retries."""
        attempt = 0
        while True:
            try:
                return self._post(body), None
            except _RequestError as exc:
                if not exc.retryable:
                    return None, self._redact(f"{exc} (not retried)")
                if attempt == self.config.max_retries:
                    return None, self._redact(f"{exc} (gave up after {attempt + 1} attempt(s); max_retries={attempt})")
            time.sleep(backoff_delay(attempt, self.config.backoff_s, self._rng))
            attempt += 1

    def _post(self, body: bytes) -> str:
        """One HTTP attempt; raises :class:`_RequestError` saying whether to retry."""
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:_ERROR_BODY_CHARS].decode(errors="replace")
            retryable = exc.code == 429 or exc.code >= 500
            raise _RequestError(f"HTTP {exc.code} from {self._url}: {detail}", retryable) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _RequestError(f"no response from {self._url}: {reason}", retryable=True) from None
        return reply_text(payload)

    def _verdict(self, cached: dict[str, str], fresh: dict[str, tuple], key: str | None) -> dict[str, Any]:
        """The verdict dict for one sample from its cached or fresh reply."""
        if key is None:
            return {"score": None, "raw_score": None, "reply": None, "cached": False, "error": None}
        reply, error = (cached[key], None) if key in cached else fresh[key]
        raw = None if reply is None else parse_score(reply, self.config.score_pattern, self.config.fallback_to_last_number)
        if error is None and raw is None:
            error = f"no score in the judge's reply {reply[:200]!r} (score_pattern {self.config.score_pattern!r})"
        score = None if raw is None else normalise_score(raw, self.config.min_score, self.config.max_score)
        return {"score": score, "raw_score": raw, "reply": reply, "cached": key in cached, "error": error}

    def _redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``***`` (servers may echo request headers)."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _read_api_key(env_name: str | None) -> str | None:
    """The key in environment variable ``env_name``; an error names the variable, never a value."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise JudgeError(f"judge api_key_env: environment variable {env_name!r} is not set or empty; export the "
                         f"judge server's API key in it, or drop api_key_env for a server without auth")
    return key


# ------------------------------------------------------------------------------ registry


_SHARED_JUDGES: dict[str, LLMJudge] = {}


def judge_for_config(config: JudgeConfig) -> LLMJudge:
    """One shared :class:`LLMJudge` per distinct config, so its threads, cache and served model
    live across steps (until :func:`close_shared_judges`)."""
    key = config.model_dump_json()
    if key not in _SHARED_JUDGES:
        _SHARED_JUDGES[key] = LLMJudge(config)
    return _SHARED_JUDGES[key]


@atexit.register
def close_shared_judges() -> None:
    """Close the judges the ``judge`` reward built (stopping their served models): called when
    a pipeline stage ends, and at exit."""
    while _SHARED_JUDGES:
        _SHARED_JUDGES.popitem()[1].close()


@register_reward("judge")
def judge_reward(prompts, completions, **kwargs) -> list[float | None]:
    """The ``judge`` reward for YAML configs: :class:`JudgeConfig` keys as keywords.

    Keywords that are :class:`JudgeConfig` fields configure the judge; the rest (TRL's
    ``completion_ids``, ``trainer_state``, dataset columns such as ``answer``) go to the judge
    call. Each distinct configuration builds one judge, reused on every later call.
    """
    options = {key: kwargs.pop(key) for key in list(kwargs) if key in JudgeConfig.model_fields}
    judge = judge_for_config(validate(JudgeConfig, options, "reward 'judge'"))
    return judge(prompts, completions, **kwargs)


judge_reward.reward_options = tuple(JudgeConfig.model_fields)  # the YAML keys it accepts


def rank_share(limit: int, world_size: int) -> int:
    """One rank's part of a limit shared by ``world_size`` ranks (at least 1).

    >>> rank_share(8, 1), rank_share(8, 3), rank_share(2, 4)
    (8, 3, 1)
    """
    return max(1, -(-limit // world_size))
