"""A local model directory served on loopback for as long as a stage needs it: by
``transformers serve`` (:class:`ModelServer`, the LLM judge's ``serve``) or by
``grpokit serve-rollouts`` (:class:`RolloutServer`, a vLLM rollout engine, possibly in another
virtualenv's Python).

:class:`ModelServer` picks a free port, starts the server process with the model preloaded,
waits until ``/health`` answers, and stops the process (terminate, then kill) when the
``with`` block ends, however it ends: normally, on an exception, or on Ctrl-C. On Linux the
process is also told to die with its parent, so a killed trainer leaves no server behind::

    with ModelServer("runs/demo/judge/model") as server:
        judge = LLMJudge({"base_url": server.base_url, "model": server.model})
        ...

The server's output goes to ``log_path`` (or a temporary file); when the server dies or never
becomes healthy, the error quotes the end of that log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from grpokit.errors import GrpokitError, JudgeError, MissingDependencyError, RolloutEngineError

POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 10.0
_LOG_TAIL_CHARS = 2000
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the with block still stops the server
        pass


def serve_command(model_dir: str | Path, port: int, device: str) -> list[str]:
    """The ``transformers serve`` command line for ``model_dir`` on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--device", device, "--log-level", "warning", str(model_dir)]


def check_serving_installed() -> None:
    """``transformers serve`` needs FastAPI and Uvicorn; say how to get them."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"serving a judge model needs {', '.join(missing)}: "
                                     f"pip install 'transformers[serving]'")


def check_servable(model_dir: str | Path) -> None:
    """Fail before any work when ``model_dir`` cannot be served: not a model directory, or
    FastAPI / Uvicorn missing."""
    if not (Path(model_dir) / "config.json").is_file():
        raise JudgeError(f"judge serve: {model_dir} is not a model directory (no config.json); "
                         f"expected a directory written by save_pretrained")
    check_serving_installed()


class ModelServer:
    """``transformers serve`` for one model directory, on a free loopback port (see the module
    docstring). ``base_url`` is the OpenAI API root; ``model`` the name to send in requests."""

    what = "judge server"
    error: type[GrpokitError] = JudgeError

    def __init__(self, model_dir: str | Path, device: str = "cpu", log_path: str | Path | None = None,
                 startup_timeout_s: float = 180.0):
        self.model_dir = Path(model_dir)
        self.model = str(self.model_dir)
        self.device = device
        self.startup_timeout_s = startup_timeout_s
        self._log_path = Path(log_path) if log_path else None
        self._process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "ModelServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process and wait until it is healthy; on failure it is stopped and the
        error quotes its log."""
        self.check()
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="grpokit-serve-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self._log_path, "w") as log:
            self._process = subprocess.Popen(self.command(), stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                             preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def check(self) -> None:
        """Fail before starting anything when the model cannot be served."""
        check_servable(self.model_dir)

    def command(self) -> list[str]:
        return serve_command(self.model_dir, self.port, self.device)

    def _wait_until_healthy(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.startup_timeout_s:
            if self._process.poll() is not None:
                raise self.error(f"{self.what} for {self.model_dir} exited with code {self._process.returncode} "
                                 f"before it was healthy; the end of its log ({self._log_path}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(POLL_SECONDS)
        raise self.error(f"{self.what} for {self.model_dir} not healthy after {self.startup_timeout_s:.0f} s; "
                         f"the end of its log ({self._log_path}):\n{self.log_tail()}")

    def alive(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Terminate the process (kill it after a grace period); safe to call twice."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def log_tail(self) -> str:
        """The last characters of the server's log."""
        try:
            return self._log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"


class RolloutServer(ModelServer):
    """``grpokit serve-rollouts`` for one model directory on a free loopback port, run by
    ``python`` (a virtualenv with vLLM; by default this one); ``root_url`` is what
    ``rollout.server_url`` takes::

        with RolloutServer("runs/sft/model", python=".venv-vllm/bin/python") as server:
            GRPOConfig(rollout={"engine": "vllm", "vllm_mode": "server", "server_url": server.root_url})
    """

    what = "rollout server"
    error = RolloutEngineError

    def __init__(self, model_dir: str | Path, python: str | Path = sys.executable, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, dtype: str = "auto", log_path: str | Path | None = None,
                 startup_timeout_s: float = 300.0):
        super().__init__(model_dir, log_path=log_path, startup_timeout_s=startup_timeout_s)
        self.python, self.dtype = str(python), dtype
        self.gpu_memory_utilization, self.max_model_len = gpu_memory_utilization, max_model_len

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            raise RolloutEngineError(f"rollout server: {self.model_dir} is not a model directory (no config.json)")

    def command(self) -> list[str]:
        command = [self.python, "-m", "grpokit.cli", "serve-rollouts", str(self.model_dir), "--port", str(self.port),
                   "--gpu-memory-utilization", str(self.gpu_memory_utilization), "--dtype", self.dtype]
        return command + (["--max-model-len", str(self.max_model_len)] if self.max_model_len else [])

