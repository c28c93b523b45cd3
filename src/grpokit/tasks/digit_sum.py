"""Digit sums with a running-sum scratchpad: the embedded default's verifiable reasoning task.

A problem is a string of digits, each labelled by a letter; the answer is their sum. A
demonstration restates each digit with its running sum inside ``<reasoning>`` and gives the
total inside ``<answer>``::

    prompt:      "sum a4b7c1d9:"
    completion:  "<reasoning>a4=4,b7=11,c1=12,d9=21</reasoning><answer>21</answer>"

The letters let a small model find the k-th digit by content rather than by counting positions
(without them a 0.8M-parameter model learns the task several times more slowly).

The SFT demonstrations come from a *noisy teacher*: with probability ``slip_rate`` one running
sum is off by 1-3 and the rest of the chain (and the answer) carries the slip, and with
probability ``no_reasoning_rate`` the teacher skips the scratchpad and guesses near the total.
A model imitating that teacher samples wrong answers at about the teacher's error rate even
when its greedy answer is right, which is the gap GRPO's correctness reward closes.

With probability ``hedge_rate`` the teacher also opens its reasoning with the filler step
``idk``, a *forbidden string*: correct or not, users do not want it. Rule rewards cannot see it;
a reward model trained on :meth:`DigitSumTask.preference_rows` (clean chain preferred over the
same chain with ``idk`` or with a repeated step) can, which gives the R1 recipe's last stage a
helpfulness/safety-style objective to optimise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from grpokit.answers import answers_match, extract_answer, is_well_formatted

def running_sums(digits: str) -> list[int]:
    """Running sums of a digit string.

    >>> running_sums("4719")
    [4, 11, 12, 21]
    """
    sums, total = [], 0
    for d in digits:
        total += int(d)
        sums.append(total)
    return sums


LABELS = "abcdefghij"
HEDGE = "idk"  # the forbidden filler step (see the module docstring)


def _repeat_one(steps: list[str], rng: random.Random) -> list[str]:
    """The steps with one of them written twice in a row.

    >>> _repeat_one(["a1=1", "b2=3"], random.Random(0))
    ['a1=1', 'b2=3', 'b2=3']
    """
    at = rng.randrange(len(steps))
    return steps[: at + 1] + steps[at:]


def parse_digits(prompt: str) -> str:
    """The digits of a prompt.

    >>> parse_digits("sum a4b7c1d9:")
    '4719'
    """
    return "".join(ch for ch in prompt.removeprefix("sum ") if ch.isdigit())


@dataclass
class DigitSumTask:
    """Generator, verifier and demonstrations for digit sums."""

    min_digits: int = 4
    max_digits: int = 6
    slip_rate: float = 0.35
    no_reasoning_rate: float = 0.1
    hedge_rate: float = 0.3
    name: str = "digit_sum"

    def problem(self, rng: random.Random) -> dict:
        """One row: ``{"prompt", "answer"}``."""
        n = rng.randint(self.min_digits, self.max_digits)
        digits = "".join(str(rng.randint(0, 9)) for _ in range(n))
        labelled = "".join(f"{LABELS[i]}{d}" for i, d in enumerate(digits))
        return {"prompt": f"sum {labelled}:", "answer": str(sum(map(int, digits)))}

    def problems(self, count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """``count`` distinct problems whose prompts are not in ``exclude``."""
        rng, rows, seen = random.Random(seed), [], set(exclude)
        while len(rows) < count:
            row = self.problem(rng)
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
        return rows

    def demonstration(self, row: dict, rng: random.Random) -> str:
        """The noisy teacher's completion for ``row`` (see the module docstring)."""
        digits = parse_digits(row["prompt"])
        sums = running_sums(digits)
        if rng.random() < self.no_reasoning_rate:
            return f"<answer>{max(0, sums[-1] + rng.choice([-2, -1, 0, 1, 2]))}</answer>"
        if rng.random() < self.slip_rate:
            at, slip = rng.randrange(len(sums)), rng.choice([-3, -2, -1, 1, 2, 3])
            sums = sums[:at] + [max(0, s + slip) for s in sums[at:]]
        steps = [f"{LABELS[i]}{d}={s}" for i, (d, s) in enumerate(zip(digits, sums))]
        if rng.random() < self.hedge_rate:
            steps.insert(0, HEDGE)
        return f"<reasoning>{','.join(steps)}</reasoning><answer>{sums[-1]}</answer>"

    def preference_rows(self, count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """``count`` pairs ``{"prompt", "chosen", "rejected"}`` for a style reward model.

        ``chosen`` is the correct, concise chain; ``rejected`` is the same chain with the
        forbidden ``idk`` step, or with one step written twice (both are equally correct, so the
        reward model learns style, not arithmetic).

        >>> row = DigitSumTask().preference_rows(1, seed=0)[0]
        >>> row["chosen"] != row["rejected"], HEDGE in row["chosen"]
        (True, False)
        """
        rng = random.Random(seed + 2)
        rows = []
        for row in self.problems(count, seed + 3, exclude):
            digits = parse_digits(row["prompt"])
            steps = [f"{LABELS[i]}{d}={s}" for i, (d, s) in enumerate(zip(digits, running_sums(digits)))]
            worse = [HEDGE] + steps if rng.random() < 0.5 else _repeat_one(steps, rng)
            wrap = lambda chain: f"<reasoning>{','.join(chain)}</reasoning><answer>{row['answer']}</answer>"  # noqa: E731
            rows.append({"prompt": row["prompt"], "chosen": wrap(steps), "rejected": wrap(worse)})
        return rows

    def sft_rows(self, count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """``count`` rows ``{"prompt", "completion", "answer"}`` from the noisy teacher."""
        rng = random.Random(seed + 1)
        return [
            {**row, "completion": self.demonstration(row, rng)}
            for row in self.problems(count, seed, exclude)
        ]

    def is_correct(self, completion: str, row: dict) -> bool:
        """True when the tagged answer equals the row's ``answer``."""
        return answers_match(extract_answer(completion), row["answer"])

    extract_answer = staticmethod(extract_answer)
    is_well_formatted = staticmethod(is_well_formatted)
