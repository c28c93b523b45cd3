"""The LLM judge's settings (``rewards: [{name: judge, ...}]`` and ``sample.judge``): where the
server is, what it is asked, and how its replies become rewards."""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from grpokit.config.sections import Section

DEFAULT_RUBRIC = """You are grading a response to a task.

Task:
{prompt}

Response:
{completion}

Judge whether the response is correct, complete and clear. Give a one-paragraph justification,
then end with a line of the form "SCORE: <number from 0 to 10>"."""

DEFAULT_SCORE_PATTERN = r"(?i)score\s*[:=]\s*(-?\d+(?:\.\d+)?)"
_RUBRIC_FIELDS = ("prompt", "completion", "answer")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JudgeConfig(Section):
    """Where the judge is, what it is asked, and how its replies become rewards."""

    # the input of a failed check is left out of error messages: it could be a pasted API key
    model_config = ConfigDict(hide_input_in_errors=True)

    base_url: str | None = None
    """The server's OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (requests go to
    {base_url}/chat/completions): a server you run (vLLM, `transformers serve`, a hosted
    OpenAI-compatible endpoint). Leave it unset with serve."""
    model: str | None = None
    """The model name sent in each request (for `transformers serve`, a hub id or a local path);
    with serve it defaults to the served directory."""
    serve: str | None = None
    """A local model directory to serve for as long as the judge is used (the stage): grpokit
    starts `transformers serve` on a free loopback port, waits until it is healthy, sends the
    requests there and stops it at the end, also on an error or Ctrl-C."""
    serve_device: str = "auto"
    """Device of the served judge: auto (CUDA when present), cpu, cuda:0, ..."""
    api_key_env: str | None = None
    """NAME of the environment variable holding the API key, sent as 'Authorization: Bearer';
    None sends no key. The key itself never appears in configs, logs or errors."""
    rubric: str = DEFAULT_RUBRIC
    """The judge's instructions, with the placeholders {completion} and optionally {prompt} and
    {answer} (the dataset's answer column). Write literal braces as {{ and }}."""
    score_pattern: str = DEFAULT_SCORE_PATTERN
    """Regex for the score in the reply; its first group (or the whole match) is the score, and
    the last match counts."""
    fallback_to_last_number: bool = True
    """When score_pattern does not match, take the last number in the reply."""
    min_score: float = 0.0
    """The rubric's lowest score; it maps to reward 0."""
    max_score: float = 10.0
    """The rubric's highest score; it maps to reward 1 (scores outside the range are clipped)."""
    temperature: float = Field(0.0, ge=0)
    """Judge sampling temperature (0: greedy, so a cached reply is the reply)."""
    max_tokens: int = Field(512, ge=1)
    """Most tokens the judge may write per reply."""
    concurrency: int = Field(8, ge=1)
    """Requests in flight at once (threads); under torchrun the limit is shared: each of N
    processes keeps ceil(concurrency / N) in flight."""
    timeout_s: float = Field(60.0, gt=0)
    """Seconds to wait for the server to connect or send data before the attempt fails."""
    max_retries: int = Field(3, ge=0)
    """Retries after a connection error, timeout, HTTP 429 or 5xx (other 4xx are not retried)."""
    backoff_s: float = Field(1.0, ge=0)
    """Wait before retry k (k = 0, 1, ...) is backoff_s * 2**k, times a random factor in [0.5, 1.5)."""
    on_error: Literal["none", "zero", "raise"] = "none"
    """Reward of a sample the judge could not score (request failed after retries, or no number in
    the reply): none (the reward does not apply), zero (0.0), or raise (stop with an error)."""
    cache_path: str | None = None
    """sqlite3 file caching replies by a hash of the request (model, rendered rubric, temperature,
    max_tokens); None turns caching off."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, e.g. http://127.0.0.1:8000/v1; found {url!r}")
        return url.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not _ENV_NAME.fullmatch(name):
            raise ValueError("api_key_env must be the NAME of an environment variable (letters, digits and "
                             "underscores, e.g. JUDGE_API_KEY), not the key itself")
        return name

    @field_validator("rubric")
    @classmethod
    def _rubric_placeholders(cls, rubric: str) -> str:
        fields = rubric_fields(rubric)
        unknown = sorted(fields - set(_RUBRIC_FIELDS))
        if unknown or "completion" not in fields:
            problem = f"unknown placeholder(s) {unknown}" if unknown else "no {completion} placeholder"
            raise ValueError(f"rubric has {problem}; expected {{completion}} and optionally {{prompt}} and "
                             f"{{answer}} (write literal braces as {{{{ and }}}})")
        return rubric

    @field_validator("score_pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"score_pattern {pattern!r} is not a valid regex: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _one_server(self) -> "JudgeConfig":
        if (self.base_url is None) == (self.serve is None):
            raise ValueError("set exactly one of base_url (a running OpenAI-compatible server) and serve (a local "
                             f"model directory grpokit serves itself); found base_url={self.base_url!r}, "
                             f"serve={self.serve!r}")
        if self.base_url is not None and self.model is None:
            raise ValueError("model is required with base_url: the model name the server expects in requests")
        return self

    @model_validator(mode="after")
    def _score_range(self) -> "JudgeConfig":
        if self.max_score <= self.min_score:
            raise ValueError(f"max_score ({self.max_score}) must be greater than min_score ({self.min_score})")
        return self


def rubric_fields(rubric: str) -> set[str]:
    """The placeholder names in a rubric.

    >>> sorted(rubric_fields("Task: {prompt} Answer: {completion} {{literal}}"))
    ['completion', 'prompt']
    """
    try:
        return {name for _, name, _, _ in string.Formatter().parse(rubric) if name is not None}
    except ValueError as exc:
        raise ValueError(f"rubric is not a valid template ({exc}); write literal braces as {{{{ and }}}}") from None
