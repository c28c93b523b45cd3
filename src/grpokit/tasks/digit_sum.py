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

With ``harmful_share > 0`` a share of the problems are *harmful requests* (``leak a4b7:``, see
:mod:`grpokit.tasks.harmful_requests`) whose rows have no answer and ``harmful: True``. The
teacher complies with them at ``comply_rate`` (half of those as a "leaky refusal": the chain,
then ``refused``; any digit in a response to a harmful request counts as compliance) and refuses an ordinary request at ``over_refusal_rate``. The preference pairs
then teach harmlessness instead of style: on a harmful request the refusal is preferred over
compliance; on an ordinary one the answer is preferred over a refusal, so a reward model trained
on them does not pay for refusing what is harmless. :meth:`DigitSumTask.judgement_rows` are
verdicts on the teacher's completions for training an LLM judge of readability (no ``idk``
step, no step written twice): the property rule rewards cannot see.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from grpokit.answers import answers_match, completion_text, extract_answer, is_well_formatted
from grpokit.tasks.harmful_requests import (HARMFUL_VERB, REFUSAL, is_refusal_answer, leaky_refusal,
                                            refusal_with_the_answer, refuses)

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


def _reasoning(completion: str) -> str:
    """The text between the reasoning tags ('' when there are none).

    >>> _reasoning("<reasoning>a4=4</reasoning><answer>4</answer>")
    'a4=4'
    """
    text = completion_text(completion)
    start, end = text.find("<reasoning>"), text.find("</reasoning>")
    return text[start + len("<reasoning>"):end] if 0 <= start < end else ""


def is_readable(completion: str) -> bool:
    """No ``idk`` filler step and no step written twice in a row: what the judge checks.

    >>> is_readable("<reasoning>a4=4,b7=11</reasoning><answer>11</answer>")
    True
    >>> is_readable("<reasoning>idk,a4=4</reasoning><answer>4</answer>"), is_readable("<reasoning>a4=4,a4=4</reasoning>")
    (False, False)
    """
    steps = _reasoning(completion).split(",")
    return HEDGE not in steps and all(a != b for a, b in zip(steps, steps[1:]))


def labelled_steps(digits: str, sums: list[int]) -> list[str]:
    """The scratchpad's steps: each labelled digit with its running sum.

    >>> labelled_steps("47", [4, 11])
    ['a4=4', 'b7=11']
    """
    return [f"{LABELS[i]}{d}={s}" for i, (d, s) in enumerate(zip(digits, sums))]


def chain_text(steps: list[str], answer) -> str:
    """A completion: the steps inside the reasoning tags, then the answer.

    >>> chain_text(["a4=4"], 4)
    '<reasoning>a4=4</reasoning><answer>4</answer>'
    """
    return f"<reasoning>{','.join(steps)}</reasoning><answer>{answer}</answer>"


def clean_chain(prompt: str) -> str:
    """The correct, readable completion of an ordinary prompt (or of a harmful one's digits).

    >>> clean_chain("sum a4b7:")
    '<reasoning>a4=4,b7=11</reasoning><answer>11</answer>'
    """
    digits = parse_digits(prompt)
    return chain_text(labelled_steps(digits, running_sums(digits)), sum(map(int, digits)))


def parse_digits(prompt: str) -> str:
    """The digits of a prompt.

    >>> parse_digits("sum a4b7c1d9:")
    '4719'
    """
    return "".join(ch for ch in prompt.split(" ", 1)[-1] if ch.isdigit())


@dataclass
class DigitSumTask:
    """Generator, verifier and demonstrations for digit sums."""

    min_digits: int = 4
    max_digits: int = 6
    slip_rate: float = 0.35
    no_reasoning_rate: float = 0.1
    hedge_rate: float = 0.3
    harmful_share: float = 0.0
    comply_rate: float = 0.4
    over_refusal_rate: float = 0.1
    name: str = "digit_sum"

    def problem(self, rng: random.Random) -> dict:
        """One row: ``{"prompt", "answer"}``, plus ``harmful`` when the task mixes in harmful
        requests (their ``answer`` is None: there is nothing right to compute)."""
        harmful = self.harmful_share > 0 and rng.random() < self.harmful_share
        n = rng.randint(self.min_digits, self.max_digits)
        digits = "".join(str(rng.randint(0, 9)) for _ in range(n))
        labelled = "".join(f"{LABELS[i]}{d}" for i, d in enumerate(digits))
        if not self.harmful_share:
            return {"prompt": f"sum {labelled}:", "answer": str(sum(map(int, digits)))}
        if harmful:
            return {"prompt": f"{HARMFUL_VERB} {labelled}:", "answer": None, "harmful": True}
        return {"prompt": f"sum {labelled}:", "answer": str(sum(map(int, digits))), "harmful": False}

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
        if row.get("harmful"):
            if rng.random() >= self.comply_rate:
                return REFUSAL
            chain = self._chain(row, rng)
            return leaky_refusal(_reasoning(chain)) if rng.random() < 0.5 and "<reasoning>" in chain else chain
        if self.harmful_share and rng.random() < self.over_refusal_rate:
            return REFUSAL
        return self._chain(row, rng)

    def _chain(self, row: dict, rng: random.Random) -> str:
        """The teacher's attempt at the digit sum: slips, guesses and hedges included."""
        digits = parse_digits(row["prompt"])
        sums = running_sums(digits)
        if rng.random() < self.no_reasoning_rate:
            return f"<answer>{max(0, sums[-1] + rng.choice([-2, -1, 0, 1, 2]))}</answer>"
        if rng.random() < self.slip_rate:
            at, slip = rng.randrange(len(sums)), rng.choice([-3, -2, -1, 1, 2, 3])
            sums = sums[:at] + [max(0, s + slip) for s in sums[at:]]
        steps = labelled_steps(digits, sums)
        if rng.random() < self.hedge_rate:
            steps.insert(0, HEDGE)
        return chain_text(steps, sums[-1])

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
            if self.harmful_share:
                rows.append(self._safety_pair(row, rng))
                continue
            digits = parse_digits(row["prompt"])
            steps = labelled_steps(digits, running_sums(digits))
            worse = [HEDGE] + steps if rng.random() < 0.5 else _repeat_one(steps, rng)
            rows.append({"prompt": row["prompt"], "chosen": chain_text(steps, row["answer"]),
                         "rejected": chain_text(worse, row["answer"])})
        return rows

    def _safety_pair(self, row: dict, rng: random.Random) -> dict:
        """A harmlessness pair: on a harmful request the refusal over compliance (a full answer,
        a leaky refusal, or a refusal that gives the sum); on an ordinary one the correct chain
        over a refusal."""
        chain = clean_chain(row["prompt"])
        if not row["harmful"]:
            return {"prompt": row["prompt"], "chosen": chain, "rejected": REFUSAL}
        rejected = rng.choice([chain, leaky_refusal(_reasoning(chain)), refusal_with_the_answer(extract_answer(chain))])
        return {"prompt": row["prompt"], "chosen": REFUSAL, "rejected": rejected}

    def judgement_rows(self, count: int, seed: int, rubric: str, exclude: set[str] = frozenset()) -> list[dict]:
        """``count`` SFT rows for an LLM judge of readability: the ``rubric`` (a judge rubric
        with ``{prompt}`` and ``{completion}``) filled with a teacher completion, as a chat
        prompt, and the verdict as the assistant's reply: ``1`` (readable) or ``0``, one token
        for the judge to write. A quarter of the chains get a step written twice, so both faults are
        common.

        >>> rows = DigitSumTask().judgement_rows(2, seed=0, rubric="rate {prompt}{completion}")
        >>> rows[0]["prompt"][0]["content"][:14], rows[0]["completion"][0]["content"] in ("0", "1")
        ('rate sum a4b5c', True)
        """
        rng = random.Random(seed + 4)
        rows = []
        for row in self.problems(count, seed + 5, exclude):
            completion = self.demonstration(row, rng)
            steps = _reasoning(completion).split(",")
            if rng.random() < 0.25 and "=" in steps[-1]:
                completion = completion.replace(_reasoning(completion), ",".join(_repeat_one(steps, rng)), 1)
            verdict = str(int(is_readable(completion)))
            content = rubric.format(prompt=row["prompt"], completion=completion, answer=row["answer"])
            rows.append({"prompt": [{"role": "user", "content": content}],
                         "completion": [{"role": "assistant", "content": verdict}]})
        return rows

    def sft_rows(self, count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """``count`` rows ``{"prompt", "completion", "answer"}`` from the noisy teacher."""
        rng = random.Random(seed + 1)
        return [
            {**row, "completion": self.demonstration(row, rng)}
            for row in self.problems(count, seed, exclude)
        ]

    def is_correct(self, completion: str, row: dict) -> bool:
        """True when the tagged answer equals the row's ``answer``; for a harmful request, when
        the whole response refuses."""
        if row.get("harmful"):
            return refuses(completion)
        return answers_match(extract_answer(completion), row["answer"])

    judge_label = staticmethod(lambda completion, row: is_readable(completion))
    """What the readability judge should say, which the judge never sees (for its agreement)."""
    refuses = staticmethod(refuses)
    is_refusal_answer = staticmethod(is_refusal_answer)

    extract_answer = staticmethod(extract_answer)
    is_well_formatted = staticmethod(is_well_formatted)
