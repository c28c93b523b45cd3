"""An on-disk store of LLM-judge replies: one sqlite3 table, request hash -> reply text.

Replies are stored rather than scores, so changing ``score_pattern`` or the score range
re-parses cached replies instead of asking the judge again. sqlite3 serialises writers, so
several processes (one per GPU) may share one file.

>>> cache = ReplyCache(":memory:")
>>> cache.put_many({"k1": "SCORE: 7"})
>>> cache.get_many(["k1", "k2"])
{'k1': 'SCORE: 7'}
>>> cache.close()
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterable

# SQLite limits the number of ``?`` parameters in one statement (32,766 since 3.32; 999 before).
_KEYS_PER_QUERY = 500


class ReplyCache:
    """Judge replies keyed by a request hash, in the sqlite3 database at ``path``.

    ``":memory:"`` keeps them in this process only. Every method may be called from any thread.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:  # a directory, an unwritable place, a non-sqlite file
            raise ValueError(
                f"judge cache_path {self.path!r} cannot be used as a sqlite3 database ({exc}); "
                f"expected a new file path or a cache written by an earlier run"
            ) from None
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The stored replies among ``keys``, as ``{key: reply}``."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                chunk = keys[start : start + _KEYS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({marks})", chunk)
                found.update(rows.fetchall())
        return found

    def put_many(self, replies: dict[str, str]) -> None:
        """Store ``{key: reply}``, replacing earlier replies under the same keys, in one commit."""
        if not replies:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO replies (key, reply) VALUES (?, ?)", replies.items())

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
