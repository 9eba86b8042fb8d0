"""The on-disk state store every daemon persists its objects in.

Choice: SQLite in WAL mode with `synchronous=FULL`, one database per daemon under the
daemon's own state directory. A transaction commits by appending to the WAL and fsyncing
it, so a kill -9 (or a power cut) at any instant leaves each record either as it was or as
it became, never torn, and a multi-record change (a container and its pod's index) commits
as one. Compared to one JSON file per object (write, fsync, rename, fsync the directory),
it costs one fsync instead of two per transition, lists without a directory scan, and has
no temp files to sweep after a crash.

Records are pydantic models with a `SCHEMA_VERSION`; the version is stored beside each
record and a record of an unknown version is a loud error instead of a silent misread.
Callers update their in-memory view only after `put` returned (the disk first, as
containerd's `UpdateSync`).

What may change while a daemon is down is the daemon's business (processes exit, mounts
vanish); the store only promises that what it returns was committed.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import ConfigDict

from .models.base import JsonModel

__all__ = ["Record", "StateStore", "StateVersionError"]


class Record(JsonModel):
    """Base of persisted records: ignore unknown fields, so a newer daemon's rows load."""

    model_config = ConfigDict(extra="ignore")
    SCHEMA_VERSION: ClassVar[int] = 1


R = TypeVar("R", bound=Record)


class StateVersionError(RuntimeError):
    """A stored record has a schema version this code does not know."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    version INTEGER NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"""


class StateStore:
    """Versioned records keyed by (kind, key) in one SQLite database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several puts/deletes into one atomic commit (nests)."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    def put(self, kind: str, key: str, record: Record) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO records (kind, key, version, data) VALUES (?, ?, ?, ?)",
                (kind, key, record.SCHEMA_VERSION, record.model_dump_json()),
            )

    def delete(self, kind: str, key: str) -> bool:
        with self.transaction():
            cur = self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
            return cur.rowcount > 0

    def get(self, kind: str, key: str, model: type[R]) -> R | None:
        with self._lock:
            row = self._db.execute(
                "SELECT version, data FROM records WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return None if row is None else self._load(kind, key, model, row[0], row[1])

    def list(self, kind: str, model: type[R]) -> builtins.list[R]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, version, data FROM records WHERE kind = ? ORDER BY key", (kind,)
            ).fetchall()
        return [self._load(kind, key, model, version, data) for key, version, data in rows]

    def keys(self, kind: str) -> builtins.list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM records WHERE kind = ? ORDER BY key", (kind,)
            ).fetchall()
        return [row[0] for row in rows]

    @staticmethod
    def _load(kind: str, key: str, model: type[R], version: int, data: str) -> R:
        if version != model.SCHEMA_VERSION:
            raise StateVersionError(
                f"{kind}/{key}: stored schema version {version}, this crib reads "
                f"{model.__name__} v{model.SCHEMA_VERSION}"
            )
        return model.model_validate_json(data)
