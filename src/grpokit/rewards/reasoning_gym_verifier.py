"""The ``reasoning_gym`` reward: a reasoning-gym dataset's own verifier on the tagged answer.

Rows of the ``reasoning_gym`` task carry a ``reasoning_gym`` column (``{"dataset", "entry"}``);
the reward is ``score_answer(answer, entry)`` in [0, 1] (some datasets give partial credit), and
None for rows without that column.
"""

from __future__ import annotations

from grpokit.answers import tag_content
from grpokit.rewards.lookup import register_reward


@register_reward("reasoning_gym")
def reasoning_gym_reward(prompts, completions, reasoning_gym=None, *, answer_tag: str = "answer",
                         **kwargs) -> list[float | None]:
    """The dataset's score of the text inside ``<answer_tag>…</answer_tag>`` (None: no answer)."""
    from grpokit.tasks.reasoning_gym import score

    rows = reasoning_gym if reasoning_gym is not None else [None] * len(completions)
    return [None if row is None else score(tag_content(c, answer_tag), row) for c, row in zip(completions, rows)]
