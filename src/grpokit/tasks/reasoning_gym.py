"""reasoning-gym's procedural datasets as a task: about a hundred verifiable reasoning problems
(arithmetic, counting, puzzles, logic) generated offline, each checked by its dataset's own
``score_answer(answer, entry)``.

A row is a chat prompt (a system message asking for reasoning and an answer in tags, then the
question), the reference ``answer``, and ``reasoning_gym``: ``{"dataset": name, "entry": the
dataset's entry}``, which the ``reasoning_gym`` reward and the evaluation hand to the verifier.
In a config::

    data:
      task: reasoning_gym
      task_options: {dataset: chain_sum, config: {min_terms: 2, max_terms: 2, max_digits: 2}}
    rewards: [format, reasoning_gym]

Training problems come from ``seed`` and held-out problems from another seed (the stages use
``data.seed + 10000``); training prompts that equal a held-out prompt are left out.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Any

from grpokit.data import prompt_key
from grpokit.errors import ConfigError, MissingDependencyError

SYSTEM_PROMPT = ("Think through the problem step by step, then give the final answer alone. Respond in "
                 "exactly this format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>")
INSTALL = "pip install reasoning-gym==0.1.25 (grpokit's [real] extra)"


def reasoning_gym():
    """The ``reasoning_gym`` package, or a clear error naming how to install it."""
    try:
        import reasoning_gym as package
    except ModuleNotFoundError:
        raise MissingDependencyError(f"data.task: reasoning_gym needs the reasoning-gym package: {INSTALL}") from None
    return package


@functools.cache
def scorer(dataset: str):
    """The dataset's ``score_answer(answer, entry) -> float in [0, 1]``."""
    return reasoning_gym().get_score_answer_fn(dataset)


def score(completion_answer: str | None, row_data: dict) -> float:
    """The dataset's score of an extracted answer for one row's ``reasoning_gym`` column."""
    return float(scorer(row_data["dataset"])(completion_answer, row_data["entry"]))


@dataclass
class ReasoningGymTask:
    """Problems from one reasoning-gym dataset (``dataset``, with its ``config`` options)."""

    dataset: str = "chain_sum"
    config: dict[str, Any] = field(default_factory=dict)
    system_prompt: str = SYSTEM_PROMPT
    teacher_error_rate: float = 0.4
    """Share of SFT demonstrations (``sft_rows``) whose answer is wrong (see there)."""
    name: str = "reasoning_gym"

    def __post_init__(self):
        known = reasoning_gym().factory.DATASETS
        if self.dataset not in known:
            import difflib

            close = difflib.get_close_matches(self.dataset, list(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"data.task_options.dataset: reasoning-gym has no dataset {self.dataset!r}; {hint}"
                              f"it has {len(known)}, e.g. chain_sum, basic_arithmetic, leg_counting, gsm_symbolic")

    def entries(self, size: int, seed: int) -> list[dict]:
        try:
            return list(reasoning_gym().create_dataset(self.dataset, size=size, seed=seed, **self.config))
        except (TypeError, AssertionError, ValueError) as error:  # its config dataclass and validate()
            raise ConfigError(f"data.task_options.config for reasoning-gym dataset {self.dataset!r}: "
                              f"{type(error).__name__}: {error}") from None

    def row(self, entry: dict) -> dict:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        prompt = [*messages, {"role": "user", "content": entry["question"]}]
        return {"prompt": prompt, "answer": entry["answer"],
                "reasoning_gym": {"dataset": self.dataset, "entry": entry}}

    def problems(self, count: int, seed: int, exclude: set = frozenset()) -> list[dict]:
        """``count`` rows from ``seed`` whose prompts are not in ``exclude`` (a set of
        :func:`~grpokit.data.prompt_key`; more entries are generated when some are excluded)."""
        size, rows = count, []
        while True:
            rows = [self.row(e) for e in self.entries(size, seed)]
            rows = [r for r in rows if prompt_key(r["prompt"]) not in exclude]
            if len(rows) >= count or size >= 4 * count + len(exclude):
                break
            size *= 2
        if len(rows) < count:
            raise ConfigError(f"reasoning-gym dataset {self.dataset!r} with {self.config} gave only {len(rows)} "
                              f"training problems outside the held-out set; lower data.num_train or widen the config")
        return rows[:count]

    def sft_rows(self, count: int, seed: int, exclude: set = frozenset()) -> list[dict]:
        """Cold-start demonstrations in the answer format, from a *noisy teacher*: a
        ``teacher_error_rate`` share give a wrong answer (a number off by 1-3, or another
        problem's answer), so that a model fine-tuned on them knows the format but not yet the
        answers, and GRPO's verifier reward has errors to remove. The reasoning is the problem's
        expression when the dataset records one (``chain_sum``: ``4 - 1 = 3``).

        >>> rows = ReasoningGymTask("chain_sum", {"max_terms": 2, "max_digits": 1}).sft_rows(2, seed=0)
        >>> rows[0]["completion"][0]["content"]  # one of the teacher's slips: 0 - 4 is -4
        '<reasoning>\\n0 - 4 = -7\\n</reasoning>\\n<answer>\\n-7\\n</answer>'
        """
        rng, rows = random.Random(seed + 1), self.problems(count, seed, exclude)
        others = [r["answer"] for r in rows]
        for row in rows:
            entry = row["reasoning_gym"]["entry"]
            answer = entry["answer"] if rng.random() >= self.teacher_error_rate else wrong_answer(entry["answer"], others, rng)
            expression = entry.get("metadata", {}).get("expression")
            reasoning = f"{expression} = {answer}" if expression else "I work through the question step by step."
            row["completion"] = [{"role": "assistant",
                                  "content": f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"}]
        return rows

    def is_correct(self, completion: str, row: dict) -> bool:
        """The dataset's verifier gives the tagged answer full marks."""
        from grpokit.answers import tag_content

        return score(tag_content(completion), row["reasoning_gym"]) >= 1.0


def wrong_answer(answer: str, others: list[str], rng: random.Random) -> str:
    """A plausible wrong answer: an integer off by 1-3, else another problem's answer.

    >>> wrong_answer("7", [], random.Random(0)) in {"4", "5", "6", "8", "9", "10"}
    True
    >>> wrong_answer("cat", ["cat", "dog"], random.Random(0))
    'dog'
    """
    try:
        return str(int(answer) + rng.choice([-3, -2, -1, 1, 2, 3]))
    except ValueError:
        choices = [o for o in others if o != answer]
        return rng.choice(choices) if choices else answer + "?"
