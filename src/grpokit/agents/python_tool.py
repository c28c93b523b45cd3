"""The built-in ``python`` tool: the model's code runs in a fresh interpreter in its own process,
with limits on CPU time, memory and wall-clock time, in an empty temporary directory, in
Python's isolated mode (no user site-packages, no environment variables, no current directory on
the path) and with an empty environment. It sees none of the run's files by path unless the code
goes looking for absolute paths: the limits contain runaway code, they are not a security
sandbox against a hostile program.

A program that crashes or is killed (by its limits or by itself) ends only its own process; the
model is told how it ended.

>>> python = python_tool(timeout_s=10)
>>> python("print(6 * 7)")
'42'
>>> python("import os; os.kill(os.getpid(), 9)")
'error: the program was killed by signal SIGKILL'
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import tempfile


def python_tool(timeout_s: float = 10.0, cpu_s: int = 5, memory_mb: int = 512, max_chars: int = 2000):
    """The tool ``python(code)`` (give it to ``tools=``) with these limits.

    Args:
        timeout_s: wall-clock seconds before the process is killed.
        cpu_s: CPU seconds (RLIMIT_CPU).
        memory_mb: address-space limit (RLIMIT_AS).
        max_chars: the answer (stdout, then stderr) is cut to this many characters.
    """

    def limit() -> None:  # in the child, before it runs Python
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))

    def python(code: str) -> str:
        """Run a Python program in a fresh interpreter and return what it printed.

        Args:
            code: The program. Print the values you want to see.
        """
        with tempfile.TemporaryDirectory(prefix="grpokit-python-") as workdir:
            try:
                done = subprocess.run([sys.executable, "-I", "-c", code], cwd=workdir, env={}, capture_output=True,
                                      text=True, timeout=timeout_s, preexec_fn=limit, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return f"error: the program did not finish within {timeout_s:g} s"
        if done.returncode == -signal.SIGXCPU:
            return f"error: the program used up its {cpu_s} s of CPU time"
        if done.returncode < 0:
            return f"error: the program was killed by signal {signal.Signals(-done.returncode).name}"
        text = (done.stdout + done.stderr[-max_chars:]).strip()
        return text if len(text) <= max_chars else text[:max_chars] + " ...[cut]"

    return python
