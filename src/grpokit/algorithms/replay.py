"""Replay for iterative reward-model training (DeepSeekMath Algorithm 1).

After each GRPO iteration the reward model keeps training "on data sampled from the policy,
with a replay mechanism that mixes in 10% historical data". ``ReplayBuffer`` holds the items of
the current round (fresh) and of every earlier round (history) and draws that mixture.
"""

from __future__ import annotations

import random
from typing import Any, Iterable


class ReplayBuffer:
    """Fresh items of the current round plus a fraction replayed from earlier rounds.

    ``add`` puts items in the current round; ``end_round`` moves them into the history.

    Example (100 items from round 1, 50 from round 2; 10 % of a 20-item draw is replayed):
        >>> buffer = ReplayBuffer()
        >>> buffer.add(range(100)); buffer.end_round(); buffer.add(range(100, 150))
        >>> batch = buffer.sample(20, replay_fraction=0.1, rng=random.Random(0))
        >>> sum(x < 100 for x in batch), sum(x >= 100 for x in batch)
        (2, 18)
    """

    def __init__(self) -> None:
        self.fresh: list[Any] = []
        self.history: list[Any] = []

    def add(self, items: Iterable[Any]) -> None:
        """Add items to the current round."""
        self.fresh.extend(items)

    def end_round(self) -> None:
        """Make the current round's items historical (call after training on them)."""
        self.history.extend(self.fresh)
        self.fresh = []

    def sample(self, n: int, replay_fraction: float = 0.1, rng: random.Random | None = None) -> list[Any]:
        """Up to ``n`` distinct items in random order: ``round(n * replay_fraction)`` from the
        history and the rest from the current round.

        When a side has fewer items than its share, all of them are taken and the result is
        shorter than ``n`` (the first round has no history, so it is all fresh).
        """
        if n < 0 or not 0 <= replay_fraction <= 1:
            raise ValueError(f"ReplayBuffer.sample: expected n >= 0 and 0 <= replay_fraction <= 1, "
                             f"got n={n}, replay_fraction={replay_fraction}")
        rng = rng or random.Random()
        replayed = min(round(n * replay_fraction), len(self.history))
        fresh = min(n - replayed, len(self.fresh))
        batch = rng.sample(self.fresh, fresh) + rng.sample(self.history, replayed)
        rng.shuffle(batch)
        return batch
