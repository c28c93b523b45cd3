"""Built-in verifiable tasks, by name.

A task generates problems (``{"prompt", "answer"}`` rows), demonstrations for SFT, and verifies
completions: ``is_correct(completion, answer)``, ``extract_answer``, ``is_well_formatted``.
"""

from grpokit.tasks.digit_sum import DigitSumTask

TASKS = {"digit_sum": DigitSumTask}


def get_task(name: str, **settings):
    """The task registered as ``name``; unknown names list the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**settings)


__all__ = ["DigitSumTask", "TASKS", "get_task"]
