"""The access log: every door decision on record in SQLite, with a retention limit, and a CLI to read it.

The daemon appends one row per unlock, denial, unknown face, remote command (accepted or rejected)
and config/gallery reload. It lives in its own file (default: `access.db` beside the event queue)
rather than in the queue database: queue rows are deleted as soon as the broker acknowledges them,
log rows are kept for weeks, and an operator reading or copying the log must never block or risk
the queue's writer. The file is created private (0600): it names people and when they came.

    python -m edge.access_log --db /var/lib/edge-face/access.db list --person Alice --since 2026-01-01
    python -m edge.access_log --db /var/lib/edge-face/access.db export --csv visits.csv --kind unlock
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from edge.errors import ConfigError, EdgeError

KINDS = ("unlock", "denied", "unknown", "spoof", "command", "reload")
COLUMNS = ("time", "kind", "person", "result", "distance", "detail", "event_id")

_SCHEMA = ("CREATE TABLE IF NOT EXISTS access_log (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
           "time TEXT NOT NULL, kind TEXT NOT NULL, person TEXT, result TEXT NOT NULL, distance REAL, "
           "detail TEXT NOT NULL DEFAULT '', event_id TEXT)")


class AccessLogError(EdgeError):
    """An unusable log file or a bad query (the CLI exits 2)."""


@dataclass(frozen=True)
class Entry:
    time: str
    kind: str
    person: str | None
    result: str
    distance: float | None
    detail: str
    event_id: str | None

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)


def parse_when(text: str, name: str) -> float:
    """ISO 8601 date or date-time -> epoch seconds; a time without zone counts as UTC."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise AccessLogError(f"--{name}: not an ISO 8601 date or time: {text!r} (e.g. 2026-05-01 or "
                             "2026-05-01T08:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class AccessLog:
    """Append-only (apart from retention) SQLite log; thread-safe."""

    def __init__(self, path: str | Path, max_days: float | None = None, max_rows: int | None = None,
                 create: bool = True) -> None:
        self.path = Path(path)
        self.max_days = max_days
        self.max_rows = max_rows
        self._lock = threading.Lock()
        if not create and not self.path.is_file():
            raise AccessLogError(f"{self.path}: no such access log")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Create it private before SQLite writes anything into it.
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5.0)
            if create:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(_SCHEMA)
                self._db.execute("CREATE INDEX IF NOT EXISTS access_log_ts ON access_log (ts)")
            self._db.execute("SELECT COUNT(*) FROM access_log").fetchone()
        except sqlite3.DatabaseError as exc:
            raise AccessLogError(f"{self.path} is not a usable access log ({exc})") from None
        except OSError as exc:
            raise AccessLogError(f"{self.path}: cannot create ({exc.strerror})") from None
        if create:
            with contextlib.suppress(OSError):
                self.path.chmod(0o600)

    def append(self, kind: str, result: str, *, person: str | None = None, distance: float | None = None,
               detail: str = "", event_id: str | None = None, when: str | None = None) -> None:
        """Record one decision and apply the retention limits."""
        if kind not in KINDS:
            raise ValueError(f"unknown access log kind {kind!r}")
        now = time.time()
        ts = parse_when(when, "when") if when else now  # the event's own time, so filters match what it says
        stamp = when or datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("INSERT INTO access_log (ts, time, kind, person, result, distance, detail, event_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (ts, stamp, kind, person, result, distance, detail,
                                                            event_id))
            if self.max_days:
                cur.execute("DELETE FROM access_log WHERE ts < ?", (now - self.max_days * 86400,))
            if self.max_rows:
                cur.execute("DELETE FROM access_log WHERE id <= (SELECT MAX(id) FROM access_log) - ?",
                            (self.max_rows,))
            cur.execute("COMMIT")

    def query(self, person: str | None = None, since: float | None = None, until: float | None = None,
              kind: str | None = None) -> list[Entry]:
        """Entries matching every given filter, oldest first."""
        where, args = [], []
        for clause, value in (("person = ?", person), ("ts >= ?", since), ("ts < ?", until), ("kind = ?", kind)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM access_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            try:
                rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise AccessLogError(f"{self.path} is not a usable access log ({exc})") from None
        return [Entry(*row) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM access_log").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def entry_from_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """The access log record for a daemon event, or None when the event is no decision."""
    kind = event.get("type")
    if kind in ("recognized", "denied", "unknown"):
        result = {"recognized": "unlocked", "denied": "refused", "unknown": "refused"}[kind]
        detail = event.get("reason", "") if kind == "denied" else ""
        return {"kind": "unlock" if kind == "recognized" else kind, "result": result, "person": event.get("person"),
                "distance": event.get("distance"), "detail": detail, "event_id": event.get("id"),
                "when": event.get("time")}
    if kind == "spoof_suspected":
        return {"kind": "spoof", "result": "refused", "person": event.get("person"), "distance": None,
                "detail": str(event.get("reason", "")), "event_id": event.get("id"), "when": event.get("time")}
    if kind == "status":
        state, detail = event.get("state"), str(event.get("detail", ""))
        mapping = {"command_done": ("command", "accepted"), "command_rejected": ("command", "rejected"),
                   "reloaded": ("reload", "done"), "reload_failed": ("reload", "failed")}
        if state in mapping:
            log_kind, result = mapping[state]
            return {"kind": log_kind, "result": result, "detail": detail, "event_id": event.get("id"),
                    "when": event.get("time")}
    return None


def write_csv(entries: list[Entry], handle: TextIO) -> None:
    """A header row, then one row per entry (spreadsheet-friendly, UTF-8)."""
    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    writer.writerows(e.row() for e in entries)


# --- CLI ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.access_log", description="Read the door's access log.")
    parser.add_argument("--db", required=True, help="access log file (access_log.path in the config)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "print matching entries"), ("export", "write matching entries as CSV")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--person", help="only this enrolled person")
        cmd.add_argument("--since", help="from this ISO 8601 date/time (inclusive; UTC unless it has a zone)")
        cmd.add_argument("--until", help="before this ISO 8601 date/time (exclusive)")
        cmd.add_argument("--kind", choices=KINDS, help="only this kind of entry")
        if name == "export":
            cmd.add_argument("--csv", required=True, help="output CSV file ('-' for stdout)")
    args = parser.parse_args(argv)
    try:
        since = parse_when(args.since, "since") if args.since else None
        until = parse_when(args.until, "until") if args.until else None
        if since is not None and until is not None and until <= since:
            raise AccessLogError("--until: must be after --since")
        log = AccessLog(args.db, create=False)
        try:
            entries = log.query(args.person, since, until, args.kind)
        finally:
            log.close()
    except (AccessLogError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "list":
        for e in entries:
            distance = f"{e.distance:.3f}" if e.distance is not None else "-"
            print(f"{e.time}  {e.kind:8s} {e.result:9s} {e.person or '-':20s} {distance:>6s}  {e.detail}")
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}", file=sys.stderr)
        return 0
    try:
        if args.csv == "-":
            write_csv(entries, sys.stdout)
        else:
            with open(args.csv, "w", newline="", encoding="utf-8") as handle:
                write_csv(entries, handle)
    except OSError as exc:
        print(f"error: --csv: cannot write {args.csv} ({exc.strerror})", file=sys.stderr)
        return 2
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} written to {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
