"""The node's journal: every instance's state, in SQLite inside the spool.

received -> (series complete) -> enhanced | failed, and one send row per derived file and
destination: pending -> sent, retried with backoff; a series whose every send went out is
forwarded. Every derived file is listed with its series (``outputs``), sent or not. SQLite in
WAL mode with synchronous=FULL: a row is on disk when the call returns, so what the C-STORE
response acknowledged, and what was sent, survive a power cut. The node is the only writer;
``status``, the web page and the metrics read (``Journal.reader``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

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
CREATE TABLE IF NOT EXISTS outputs (
    path TEXT PRIMARY KEY, series_uid TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outputs_series ON outputs(series_uid);
CREATE INDEX IF NOT EXISTS sends_series ON sends(series_uid);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Instances received, enhanced and failed since the journal began: an instance sent again
# goes back to 'received', so counting rows by state could go down; Prometheus counters may not.
TOTALS = ("received", "enhanced", "failed")
# Columns added after the first release, to journals made before them: (table, column, type).
# instances.done: when the instance was enhanced or failed; series.forwarded_at: when its
# last send went out (both feed the web page's last hour and the latency histogram).
ADDED_COLUMNS = (("instances", "done", "REAL"), ("series", "forwarded_at", "REAL"))
# Backoff between tries of one send: doubling from 2 s, at most 5 minutes.
FIRST_RETRY_S, MAX_RETRY_S = 2.0, 300.0


@dataclass(frozen=True)
class Send:
    path: str
    destination: str
    attempts: int


class Journal:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        """``readonly``: a reader beside the node (the web page, metrics): SQLite's read-only
        mode, so nothing it does can change the journal; WAL lets it read while the node
        writes."""
        self.path = path
        self.lock = threading.Lock()  # SCP threads and the main loop share one connection
        if readonly:
            self.db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                                      check_same_thread=False, isolation_level=None)
            return
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        with self.transaction() as db:  # a journal from before the totals: start from its rows
            if db.execute("SELECT COUNT(*) FROM totals").fetchone()[0] == 0:
                states = dict(db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state"))
                db.executemany("INSERT INTO totals VALUES (?, ?)", [
                    ("received", sum(states.values())), ("enhanced", states.get("enhanced", 0)),
                    ("failed", states.get("failed", 0))])

    @classmethod
    def reader(cls, spool: Path) -> "Journal":
        return cls(spool / "journal.sqlite", readonly=True)

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
            db.execute("INSERT INTO instances (sop_uid, series_uid, path, received, state) "
                       "VALUES (?, ?, ?, ?, 'received') "
                       "ON CONFLICT(sop_uid) DO UPDATE SET path=excluded.path, "
                       "received=excluded.received, state='received', error=NULL, done=NULL",
                       (sop_uid, series_uid, str(path), now))
            db.execute("INSERT INTO series (series_uid, last_received, state) VALUES "
                       "(?, ?, 'open') ON CONFLICT(series_uid) DO UPDATE SET "
                       "last_received=excluded.last_received, state='open', forwarded_at=NULL",
                       (series_uid, now))
            add_total(db, "received", 1)

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
        with self.transaction() as db:
            queue_output(db, path, series_uid, destinations, time.time())

    def enhanced(self, series_uid: str, outputs: list[Path], failed: dict[str, str],
                 destinations: list[str], started: float) -> Optional[float]:
        """The series' results are in the spool: queue them for every destination. Only if
        nothing arrived since ``started`` does the series close; else it runs again. Returns
        the series' latency if it is finished now (``forwarded``)."""
        now = time.time()
        with self.transaction() as db:
            for path in outputs:
                queue_output(db, path, series_uid, destinations, now)
            for path, reason in failed.items():
                add_total(db, "failed", db.execute(
                    "UPDATE instances SET state='failed', error=?, done=? WHERE path=? AND "
                    "state != 'failed'", (reason[:500], now, path)).rowcount)
            add_total(db, "enhanced", db.execute(
                "UPDATE instances SET state='enhanced', done=? WHERE series_uid=? AND "
                "state='received' AND received <= ?", (now, series_uid, started)).rowcount)
            db.execute("UPDATE series SET started_at=?, enhanced_at=? WHERE series_uid=?",
                       (started, now, series_uid))
            db.execute("UPDATE series SET state='enhanced' WHERE series_uid=? AND "
                       "last_received <= ?", (series_uid, started))
            return forwarded(db, series_uid, bool(destinations), now)

    # -- sending --------------------------------------------------------------------------
    def due(self, destination: str, limit: int = 200) -> list[Send]:
        with self.lock:
            rows = self.db.execute("SELECT path, destination, attempts FROM sends WHERE "
                                   "destination=? AND state='pending' AND next_try <= ? "
                                   "ORDER BY next_try, path LIMIT ?",
                                   (destination, time.time(), limit)).fetchall()
        return [Send(*r) for r in rows]

    def sent(self, send: Send) -> Optional[float]:
        """One send went out; returns its series' latency if that was the series' last."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE sends SET state='sent', attempts=attempts+1, error=NULL, "
                       "sent_at=? WHERE path=? AND destination=?",
                       (now, send.path, send.destination))
            row = db.execute("SELECT series_uid FROM sends WHERE path=? AND destination=?",
                             (send.path, send.destination)).fetchone()
            return forwarded(db, row[0], True, now) if row else None

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
        return {"instances": instances, "series": series, "sends": sends,
                "last_errors": self.last_events(), "retrying": self.retrying()}

    def retrying(self, limit: int = 10) -> list[dict]:
        """Sends that failed and wait for their next try, soonest first (file names only)."""
        with self.lock:
            return [{"file": Path(p).name, "destination": d, "attempts": a, "error": e}
                    for p, d, a, e in self.db.execute(
                        "SELECT path, destination, attempts, error FROM sends WHERE "
                        "state='pending' AND attempts > 0 ORDER BY next_try LIMIT ?", (limit,))]

    def destinations(self, since: float = 0.0) -> dict[str, dict[str, int]]:
        """Per destination: files pending (the backlog), sent, retrying (pending after a failed
        try), retries (failed tries in all) and sent since ``since``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT destination, SUM(state='pending'), SUM(state='sent'), "
                "SUM(state='pending' AND attempts > 0), SUM(attempts), SUM(sent_at >= ?) "
                "FROM sends GROUP BY destination", (since,)).fetchall()
        return {d: {"pending": p or 0, "sent": s or 0, "retrying": r or 0,
                    "retries": (a or 0) - (s or 0), "sent_since": h or 0}
                for d, p, s, r, a, h in rows}

    # -- reading: the web page and the metrics ---------------------------------------------
    def counters(self) -> dict:
        """Totals since the journal began, for Prometheus' counters and gauges: instances
        received (every instance accepted, one sent again included), enhanced, failed,
        refused; per destination the files sent, retries and backlog (pending)."""
        with self.lock:
            db = self.db
            totals = dict(db.execute("SELECT name, value FROM totals"))
            refused = db.execute("SELECT COUNT(*) FROM events WHERE kind='refused'").fetchone()[0]
            waiting = db.execute("SELECT COUNT(*) FROM series WHERE state='open'").fetchone()[0]
        return {**{name: totals.get(name, 0) for name in TOTALS}, "refused": refused,
                "sends": self.destinations(), "series_waiting": waiting}

    def overview(self, since: float) -> dict:
        """The web page's overview: instances and series by state (an enhanced instance of a
        forwarded series counts as forwarded), sends per destination, and since ``since``
        (the last hour): instances done, files sent, series latencies."""
        with self.lock:
            db = self.db
            instances = dict(db.execute(
                "SELECT CASE WHEN i.state='enhanced' AND s.forwarded_at IS NOT NULL "
                "THEN 'forwarded' ELSE i.state END, COUNT(*) FROM instances i "
                "JOIN series s ON s.series_uid = i.series_uid GROUP BY 1"))
            series = dict(db.execute(
                "SELECT CASE WHEN state='open' THEN 'received' WHEN forwarded_at IS NOT NULL "
                "THEN 'forwarded' WHEN NOT EXISTS (SELECT 1 FROM instances i WHERE "
                "i.series_uid = s.series_uid AND i.state != 'failed') THEN 'failed' "
                "ELSE state END, COUNT(*) FROM series s GROUP BY 1"))
            done = dict(db.execute("SELECT state, COUNT(*) FROM instances WHERE done >= ? "
                                   "GROUP BY state", (since,)))
            latencies = [r[0] for r in db.execute(
                "SELECT forwarded_at - last_received FROM series WHERE forwarded_at >= ? "
                "ORDER BY 1", (since,))]
        return {"instances": instances, "series": series, "sends": self.destinations(since),
                "last_hour": {"enhanced": done.get("enhanced", 0), "failed": done.get("failed", 0),
                              "series_latency_s": latencies}}

    def series_rows(self, limit: int = 50) -> list[dict]:
        """The ``limit`` series that received last, newest first: arrival times, state,
        instances by state, one instance's path, the count of derived files."""
        with self.lock:
            rows = self.db.execute(
                "SELECT s.series_uid, s.state, s.last_received, s.enhanced_at, s.forwarded_at, "
                "MIN(i.received), COUNT(i.sop_uid), SUM(i.state='enhanced'), "
                "SUM(i.state='failed'), MIN(i.path), (SELECT COUNT(*) FROM outputs o WHERE "
                "o.series_uid = s.series_uid) FROM series s LEFT JOIN instances i ON "
                "i.series_uid = s.series_uid GROUP BY s.series_uid "
                "ORDER BY s.last_received DESC LIMIT ?", (limit,)).fetchall()
        keys = ("series_uid", "state", "last_received", "enhanced_at", "forwarded_at",
                "first_received", "instances", "enhanced", "failed", "first_path", "outputs")
        return [dict(zip(keys, row)) for row in rows]

    def series_files(self, series_uid: str) -> tuple[list[tuple[str, Path, str]], list[Path]]:
        """A series' received instances (SOP Instance UID, spool path, state) and its derived
        files."""
        with self.lock:
            instances = [(sop, Path(path), state) for sop, path, state in self.db.execute(
                "SELECT sop_uid, path, state FROM instances WHERE series_uid=? ORDER BY path",
                (series_uid,))]
            outputs = [Path(r[0]) for r in self.db.execute(
                "SELECT path FROM outputs WHERE series_uid=? ORDER BY path", (series_uid,))]
        return instances, outputs

    def last_events(self, limit: int = 10) -> list[dict]:
        with self.lock:
            return [{"at": at, "kind": kind, "message": message} for at, kind, message in
                    self.db.execute("SELECT at, kind, message FROM events ORDER BY at DESC "
                                    "LIMIT ?", (limit,))]


def add_total(db: sqlite3.Connection, name: str, count: int) -> None:
    if count:
        db.execute("INSERT INTO totals VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                   "value = value + excluded.value", (name, count))


def queue_output(db: sqlite3.Connection, path: Path, series_uid: str, destinations: list[str],
                 now: float) -> None:
    db.execute("INSERT OR IGNORE INTO outputs VALUES (?, ?, ?)", (str(path), series_uid, now))
    for destination in destinations:
        db.execute("INSERT OR IGNORE INTO sends VALUES (?, ?, ?, 'pending', 0, ?, NULL, NULL)",
                   (str(path), destination, series_uid, now))


def forwarded(db: sqlite3.Connection, series_uid: str, sending: bool, now: float) -> Optional[float]:
    """The latency of a series that is finished — last slice received to last derived file
    sent, or with no destinations (``sending`` False) to the end of its enhancement — or None
    if it is not finished. A series whose every send went out is closed once: forwarded_at."""
    row = db.execute("SELECT state, forwarded_at, last_received FROM series WHERE series_uid=?",
                     (series_uid,)).fetchone()
    if row is None or row[0] != "enhanced" or row[1] is not None:
        return None
    if not sending:
        return now - row[2]
    pending, last = db.execute("SELECT SUM(state != 'sent'), MAX(sent_at) FROM sends WHERE "
                               "series_uid=?", (series_uid,)).fetchone()
    if last is None or pending:
        return None
    # Everything was sent before this slice arrived (it was sent again, or failed): the series
    # is finished now, not at its last send.
    finished = last if last >= row[2] else now
    db.execute("UPDATE series SET forwarded_at=? WHERE series_uid=?", (finished, series_uid))
    return finished - row[2]


def open_journal(spool: Path) -> Journal:
    return Journal(spool / "journal.sqlite")
