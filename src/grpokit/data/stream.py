"""Rows out, in batches: the endless, resumable prompt stream and shuffled epochs of batches."""

from __future__ import annotations

import random
from typing import Iterator

from grpokit.errors import DatasetError


class PromptStream:
    """Endless, resumable stream of rows, reshuffled every epoch.

    The order of epoch ``e`` is a pure function of ``(seed, e)``, so
    ``(epoch, position, seed)`` is the whole state: a stream rebuilt from
    :meth:`state_dict` continues with exactly the rows the original would have
    produced. Batches run across epoch boundaries.

    Args:
        rows: the rows to stream (not copied up front; each yielded row is a shallow copy).
        seed: shuffling seed.
        shuffle: if False, rows come in dataset order every epoch.

    >>> stream = PromptStream([{"prompt": p} for p in "abc"], seed=1)
    >>> first = stream.next_batch(2)
    >>> saved = stream.state_dict()
    >>> rest = stream.next_batch(4)
    >>> resumed = PromptStream([{"prompt": p} for p in "abc"])
    >>> resumed.load_state_dict(saved)
    >>> resumed.next_batch(4) == rest
    True
    >>> sorted(r["prompt"] for r in first + rest[:1])  # one full epoch
    ['a', 'b', 'c']
    """

    def __init__(self, rows: list[dict], seed: int = 0, shuffle: bool = True):
        if len(rows) == 0:
            raise DatasetError("PromptStream: got 0 rows; expected at least one row")
        self.rows = rows
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        """Row indices for ``epoch``: a permutation determined by (seed, epoch)."""
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[dict]:
        """Return the next ``n`` rows, starting a new shuffled epoch when needed."""
        if n < 1:
            raise ValueError(f"PromptStream.next_batch: n must be >= 1, found {n}")
        batch = []
        while len(batch) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            batch.append(dict(self.rows[self._order[self.position]]))
            self.position += 1
        return batch

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return self.next_batch(1)[0]

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "seed", "num_rows"}``; plain ints, JSON-safe."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`; ``num_rows`` is checked when present."""
        missing = [k for k in ("epoch", "position", "seed") if k not in state]
        if missing:
            raise KeyError(f"PromptStream.load_state_dict: state is missing {missing}; found keys {sorted(state)}")
        num_rows = state.get("num_rows", len(self.rows))
        if num_rows != len(self.rows) or not 0 <= state["position"] <= len(self.rows):
            raise ValueError(
                f"PromptStream.load_state_dict: state was saved for {num_rows} rows at position "
                f"{state['position']}, but this stream has {len(self.rows)} rows; resume with the same dataset"
            )
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)


def shuffled_batches(items: list, size: int, seed: int) -> Iterator[list]:
    """Endless batches of ``size`` items, a new permutation each epoch (the last partial batch
    of an epoch is dropped unless the data is smaller than one batch).

    >>> batches = shuffled_batches(list("abcde"), 2, seed=0)
    >>> epoch = [next(batches) for _ in range(2)]
    >>> all(len(b) == 2 for b in epoch), len(set(sum(epoch, [])))
    (True, 4)
    """
    rng = random.Random(seed)
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        for start in range(0, max(len(order) - size, 0) + 1, size):
            yield [items[i] for i in order[start : start + size]]
