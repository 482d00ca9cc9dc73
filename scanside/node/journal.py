"""The node's journal: every instance's state, in SQLite inside the spool.

received -> (series complete) -> enhanced | failed, and one send row per derived file and
destination: pending -> sent, retried with backoff. SQLite in WAL mode with synchronous=FULL:
a row is on disk when the call returns, so what the C-STORE response acknowledged, and what
was sent, survive a power cut. The node is the only writer; ``status`` reads.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, path TEXT NOT NULL,
    received REAL NOT NULL, state TEXT NOT NULL, error TEXT);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, last_received REAL NOT NULL, state TEXT NOT NULL,
    error TEXT, started_at REAL, enhanced_at REAL);
CREATE TABLE IF NOT EXISTS sends (
    path TEXT NOT NULL, destination TEXT NOT NULL, series_uid TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL,
    error TEXT, sent_at REAL, PRIMARY KEY (path, destination));
CREATE TABLE IF NOT EXISTS events (at REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS taken (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
"""
# Backoff between tries of one send: doubling from 2 s, at most 5 minutes.
FIRST_RETRY_S, MAX_RETRY_S = 2.0, 300.0


@dataclass(frozen=True)
class Send:
    path: str
    destination: str
    attempts: int


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # SCP threads and the main loop share one connection
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- receiving ------------------------------------------------------------------------
    def received(self, sop_uid: str, series_uid: str, path: Path) -> None:
        """An instance is in the spool; its series is open again (a late slice re-enhances
        it: finished instances are skipped, the new one is added to the same series)."""
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO instances VALUES (?, ?, ?, ?, 'received', NULL) "
                       "ON CONFLICT(sop_uid) DO UPDATE SET path=excluded.path, "
                       "received=excluded.received, state='received', error=NULL",
                       (sop_uid, series_uid, str(path), now))
            db.execute("INSERT INTO series VALUES (?, ?, 'open', NULL, NULL, NULL) "
                       "ON CONFLICT(series_uid) DO UPDATE SET "
                       "last_received=excluded.last_received, state='open'", (series_uid, now))

    def is_taken(self, path: Path, size: int, mtime_ns: int) -> bool:
        """Watch mode: this file, at this size and time, was taken already."""
        with self.lock:
            row = self.db.execute("SELECT size, mtime_ns FROM taken WHERE path=?",
                                  (str(path),)).fetchone()
        return row is not None and tuple(row) == (size, mtime_ns)

    def take(self, path: Path, size: int, mtime_ns: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO taken VALUES (?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                       "size=excluded.size, mtime_ns=excluded.mtime_ns", (str(path), size, mtime_ns))

    def event(self, kind: str, message: str) -> None:
        """A refusal or an error, for ``status`` (messages never carry patient data)."""
        with self.transaction() as db:
            db.execute("INSERT INTO events VALUES (?, ?, ?)", (time.time(), kind, message[:500]))

    # -- enhancing ------------------------------------------------------------------------
    def complete_series(self, idle_s: float) -> list[str]:
        """Open series that received nothing for ``idle_s`` seconds."""
        with self.lock:
            rows = self.db.execute("SELECT series_uid FROM series WHERE state='open' AND "
                                   "last_received <= ?", (time.time() - idle_s,)).fetchall()
        return [r[0] for r in rows]

    def instances(self, series_uid: str) -> list[Path]:
        with self.lock:
            rows = self.db.execute("SELECT path FROM instances WHERE series_uid=? AND "
                                   "state != 'refused' ORDER BY path", (series_uid,)).fetchall()
        return [Path(r[0]) for r in rows]

    def queue(self, path: Path, series_uid: str, destinations: list[str]) -> None:
        """One finished derived file: to be sent to each destination (once: a file queued
        again after a crash keeps its row)."""
        now = time.time()
        with self.transaction() as db:
            for destination in destinations:
                db.execute("INSERT OR IGNORE INTO sends VALUES (?, ?, ?, 'pending', 0, ?, NULL, "
                           "NULL)", (str(path), destination, series_uid, now))

    def enhanced(self, series_uid: str, outputs: list[Path], failed: dict[str, str],
                 destinations: list[str], started: float) -> None:
        """The series' results are in the spool: queue them for every destination. Only if
        nothing arrived since ``started`` does the series close; else it runs again."""
        now = time.time()
        with self.transaction() as db:
            for path in outputs:
                for destination in destinations:
                    db.execute("INSERT OR IGNORE INTO sends VALUES (?, ?, ?, 'pending', 0, ?, "
                               "NULL, NULL)", (str(path), destination, series_uid, now))
            db.execute("UPDATE instances SET state='enhanced' WHERE series_uid=? AND "
                       "state='received' AND received <= ?", (series_uid, started))
            for path, reason in failed.items():
                db.execute("UPDATE instances SET state='failed', error=? WHERE path=?",
                           (reason[:500], path))
            db.execute("UPDATE series SET started_at=?, enhanced_at=? WHERE series_uid=?",
                       (started, now, series_uid))
            db.execute("UPDATE series SET state='enhanced' WHERE series_uid=? AND "
                       "last_received <= ?", (series_uid, started))

    # -- sending --------------------------------------------------------------------------
    def due(self, destination: str, limit: int = 200) -> list[Send]:
        with self.lock:
            rows = self.db.execute("SELECT path, destination, attempts FROM sends WHERE "
                                   "destination=? AND state='pending' AND next_try <= ? "
                                   "ORDER BY next_try, path LIMIT ?",
                                   (destination, time.time(), limit)).fetchall()
        return [Send(*r) for r in rows]

    def sent(self, send: Send) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sends SET state='sent', attempts=attempts+1, error=NULL, "
                       "sent_at=? WHERE path=? AND destination=?",
                       (time.time(), send.path, send.destination))

    def retry(self, send: Send, error: str) -> None:
        delay = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** send.attempts)
        with self.transaction() as db:
            db.execute("UPDATE sends SET attempts=attempts+1, next_try=?, error=? WHERE path=? "
                       "AND destination=?", (time.time() + delay, error[:500], send.path,
                                             send.destination))

    def timeline(self) -> list[dict]:
        """Per series: last received, enhancement start and end, last send (epoch seconds)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT s.series_uid, s.last_received, s.started_at, s.enhanced_at, "
                "MAX(d.sent_at), COUNT(d.sent_at) FROM series s LEFT JOIN sends d "
                "ON d.series_uid = s.series_uid GROUP BY s.series_uid").fetchall()
        keys = ("series", "last_received", "started", "enhanced", "last_sent", "sent")
        return [dict(zip(keys, row)) for row in rows]

    # -- health ---------------------------------------------------------------------------
    def summary(self) -> dict:
        with self.lock:
            db = self.db
            instances = dict(db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state"))
            series = dict(db.execute("SELECT state, COUNT(*) FROM series GROUP BY state"))
            sends: dict[str, dict[str, int]] = {}
            for destination, state, count in db.execute(
                    "SELECT destination, state, COUNT(*) FROM sends GROUP BY destination, state"):
                sends.setdefault(destination, {})[state] = count
            errors = [{"at": at, "kind": kind, "message": message} for at, kind, message in
                      db.execute("SELECT at, kind, message FROM events ORDER BY at DESC LIMIT 10")]
            retrying = [{"file": Path(p).name, "destination": d, "attempts": a, "error": e}
                        for p, d, a, e in db.execute(
                            "SELECT path, destination, attempts, error FROM sends WHERE "
                            "state='pending' AND attempts > 0 ORDER BY next_try LIMIT 10")]
        return {"instances": instances, "series": series, "sends": sends,
                "last_errors": errors, "retrying": retrying}


def open_journal(spool: Path) -> Journal:
    return Journal(spool / "journal.sqlite")
