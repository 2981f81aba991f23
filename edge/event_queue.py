"""A bounded, ordered, crash-safe queue of outgoing MQTT messages in SQLite.

Every durable event is written here before it is published and removed only after the broker
acknowledged it (QoS 1 PUBACK), so a broker outage or a daemon restart loses nothing within the
bound. Beyond `max_events` the oldest entries are dropped and the total dropped is kept in the
file, so the loss is reported instead of silent.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ConfigError


@dataclass(frozen=True)
class QueuedMessage:
    seq: int
    topic: str
    payload: bytes
    retain: bool


class EventQueue:
    """FIFO of (topic, payload, retain) with a size bound; thread-safe."""

    def __init__(self, path: str | Path, max_events: int) -> None:
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        self.path = Path(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._nonempty = threading.Condition(self._lock)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"queue.path: {self.path} is not a usable event queue ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"queue.path: cannot create {self.path.parent} ({exc.strerror})") from None
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)

    def put(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Append a message; returns how many old messages were dropped to stay within the bound."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("INSERT INTO queue (topic, payload, retain) VALUES (?, ?, ?)", (topic, payload, int(retain)))
            (count,) = cur.execute("SELECT COUNT(*) FROM queue").fetchone()
            dropped = max(0, count - self.max_events)
            if dropped:
                cur.execute("DELETE FROM queue WHERE seq IN (SELECT seq FROM queue ORDER BY seq LIMIT ?)", (dropped,))
                cur.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
            cur.execute("COMMIT")
            self._nonempty.notify_all()
            return dropped

    def peek(self, timeout: float | None = None) -> QueuedMessage | None:
        """The oldest message, waiting up to `timeout` seconds for one; None if still empty."""
        with self._nonempty:
            row = self._head()
            if row is None and timeout:
                self._nonempty.wait(timeout)
                row = self._head()
            return row

    def _head(self) -> QueuedMessage | None:
        row = self._db.execute("SELECT seq, topic, payload, retain FROM queue ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return None
        return QueuedMessage(row[0], row[1], bytes(row[2]), bool(row[3]))

    def remove(self, seq: int) -> None:
        """Delete a delivered message."""
        with self._lock:
            self._db.execute("DELETE FROM queue WHERE seq = ?", (seq,))

    def wake(self) -> None:
        """Release a waiting `peek` (used when stopping)."""
        with self._nonempty:
            self._nonempty.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    @property
    def dropped(self) -> int:
        """Messages dropped over the bound since the file was created."""
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
