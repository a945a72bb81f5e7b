"""Decisions, anomalies and pipeline health in SQLite (zero-setup default) or PostgreSQL.

``open_database(url)`` connects and brings the schema up to date: ``MIGRATIONS`` are
ordered SQL steps, the same SQL for both databases, applied once each and recorded in
``schema_version`` under a write lock, so the job and the dashboard may open the same
database at the same time. URLs: ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db``,
``postgresql://user:password@host:port/dbname``.

Writes are upserts on ``(symbol, interval, open_time)``: a replayed candle or a restarted
job updates its row, never adds one. One transaction per micro-batch. SQLite runs in WAL
mode so the dashboard reads while the job writes.

Sized for thousands of symbols and weeks of one-minute decisions (tens of millions of rows):
the same transaction keeps ``symbols`` (each symbol's latest candle, one row per symbol and
interval) and ``decision_counts`` (the row count) up to date, so the dashboard's symbol list,
health view and totals never scan ``decisions``. ``delete_expired`` bounds the table: ordinary
decisions older than the retention (market time, behind the newest candle) go oldest first in
chunks of ``EXPIRY_CHUNK_CANDLES`` per transaction; anomalies are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from market_anomaly import metrics
from market_anomaly.config import redact
from market_anomaly.sinks.common import DECISION_COLUMNS, column_values, json_objects, levels_at_least, plain

log = logging.getLogger(__name__)

KEY_COLUMNS = ("symbol", "interval", "open_time")
BOOLEAN_COLUMNS = ("is_anomaly", "market_event")

# ``symbols`` and ``decision_counts`` from ``decisions``: what migration 3 does to an existing database, and
# ``rebuild_summaries`` after a bulk load that bypassed ``upsert_decisions``.
REBUILD_SUMMARIES = (
    "DELETE FROM symbols",
    """INSERT INTO symbols (symbol, "interval", open_time, close, is_anomaly, confidence, decided_at)
        SELECT d.symbol, d."interval", d.open_time, d.close, d.is_anomaly, d.confidence, d.decided_at
        FROM decisions d JOIN (SELECT symbol, "interval", MAX(open_time) AS open_time FROM decisions
                               GROUP BY symbol, "interval") latest
        ON d.symbol = latest.symbol AND d."interval" = latest."interval" AND d.open_time = latest.open_time""",
    "DELETE FROM decision_counts",
    "INSERT INTO decision_counts (id, decisions) SELECT 1, COUNT(*) FROM decisions",
)

# (version, what it does, statements). Append new steps; never edit an applied one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "decisions, anomalies view, pipeline health", (
        """CREATE TABLE decisions (
            symbol TEXT NOT NULL,
            "interval" TEXT NOT NULL,
            open_time BIGINT NOT NULL,
            close_time BIGINT,
            open DOUBLE PRECISION,
            high DOUBLE PRECISION,
            low DOUBLE PRECISION,
            close DOUBLE PRECISION,
            return_pct DOUBLE PRECISION,
            log_return DOUBLE PRECISION,
            range_pct DOUBLE PRECISION,
            volume DOUBLE PRECISION,
            volume_ratio DOUBLE PRECISION,
            zscore DOUBLE PRECISION,
            votes INTEGER,
            is_anomaly BOOLEAN NOT NULL,
            confidence TEXT NOT NULL,
            reasons TEXT NOT NULL DEFAULT '',
            market_event BOOLEAN,
            produced_at BIGINT,
            decided_at BIGINT,
            extra TEXT,
            PRIMARY KEY (symbol, "interval", open_time)
        )""",
        "CREATE INDEX decisions_anomalies ON decisions (open_time) WHERE is_anomaly",
        "CREATE INDEX decisions_decided_at ON decisions (decided_at)",
        "CREATE VIEW anomalies AS SELECT * FROM decisions WHERE is_anomaly",
        """CREATE TABLE pipeline_health (
            query TEXT PRIMARY KEY,
            batch_id BIGINT,
            input_rows BIGINT,
            processed_rows_per_second DOUBLE PRECISION,
            batch_duration_ms BIGINT,
            partitions TEXT,
            at BIGINT
        )""",
    )),
    (2, "pipeline health: durable sinks' outages", (
        "ALTER TABLE pipeline_health ADD COLUMN sinks TEXT",
    )),
    (3, "symbols with their latest candle, the decision count, per-symbol anomaly index", (
        """CREATE TABLE IF NOT EXISTS symbols (
            symbol TEXT NOT NULL,
            "interval" TEXT NOT NULL,
            open_time BIGINT NOT NULL,
            close DOUBLE PRECISION,
            is_anomaly BOOLEAN NOT NULL,
            confidence TEXT NOT NULL,
            decided_at BIGINT,
            PRIMARY KEY (symbol, "interval")
        )""",
        "CREATE TABLE IF NOT EXISTS decision_counts (id INTEGER PRIMARY KEY, decisions BIGINT NOT NULL)",
        *REBUILD_SUMMARIES,
        # The anomaly table filtered by symbol: without it, a symbol's whole history is read and sorted.
        "CREATE INDEX IF NOT EXISTS decisions_anomalies_by_symbol ON decisions (symbol, open_time) WHERE is_anomaly",
        # Retention deletes ordinary decisions oldest first, in chunks along this index.
        "CREATE INDEX IF NOT EXISTS decisions_ordinary ON decisions (open_time) WHERE NOT is_anomaly",
    )),
)
# Ordinary decisions deleted per transaction by ``delete_expired``: short enough (60-80 ms at 2,000 symbols)
# that the job and the dashboard hardly wait for the write lock.
EXPIRY_CHUNK_CANDLES = 5_000
STALE_AFTER_MS = 180_000  # a symbol without a candle for 3 minutes of market time (three 1m intervals) is stale
# Keys looked up per statement when counting a batch's new rows (3 parameters each; both drivers take far more).
KEYS_PER_LOOKUP = 500

STORED_COLUMNS = DECISION_COLUMNS + ("extra",)
READ_COLUMNS = ", ".join(f'"{column}"' for column in STORED_COLUMNS)
KEY_POSITIONS = tuple(STORED_COLUMNS.index(key) for key in KEY_COLUMNS)  # the key's fields in a stored row
UPSERT_DECISION = (
    f"INSERT INTO decisions ({READ_COLUMNS}) VALUES ({', '.join('?' for _ in STORED_COLUMNS)}) "
    f"ON CONFLICT (symbol, \"interval\", open_time) DO UPDATE SET "
    + ", ".join(f'"{column}" = excluded."{column}"' for column in STORED_COLUMNS if column not in KEY_COLUMNS)
)
SYMBOL_COLUMNS = ("symbol", "interval", "open_time", "close", "is_anomaly", "confidence", "decided_at")
SYMBOL_NAMES = ", ".join(f'"{column}"' for column in SYMBOL_COLUMNS)
UPSERT_SYMBOL = (  # a symbol's row follows its newest candle; a replayed older one leaves it
    f"INSERT INTO symbols ({SYMBOL_NAMES}) VALUES ({', '.join('?' for _ in SYMBOL_COLUMNS)}) "
    'ON CONFLICT (symbol, "interval") DO UPDATE SET '
    + ", ".join(f'"{column}" = excluded."{column}"' for column in SYMBOL_COLUMNS[2:])
    + " WHERE excluded.open_time >= symbols.open_time"
)
HEALTH_COLUMNS = ("query", "batch_id", "input_rows", "processed_rows_per_second", "batch_duration_ms",
                  "partitions", "at", "sinks")
UPSERT_HEALTH = (
    f"INSERT INTO pipeline_health ({', '.join(HEALTH_COLUMNS)}) VALUES ({', '.join('?' for _ in HEALTH_COLUMNS)}) "
    "ON CONFLICT (query) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in HEALTH_COLUMNS[1:])
)


class DatabaseError(RuntimeError):
    """The database cannot be opened or migrated (bad URL, server down, wrong credentials)."""


def default_url() -> str:
    from market_anomaly import config

    return f"sqlite:///{config.home_dir() / 'anomalies.db'}"


def open_database(url: str) -> "Database":
    """Connect to ``url`` and migrate its schema; raises ``DatabaseError`` with the reason."""
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    raise DatabaseError(f"unsupported database URL {redact(url)!r}: use sqlite:///PATH or postgresql://...")


# Whose scores the ``extra`` column keeps: every decision's, or only the anomalies' (the command line's default:
# they are two thirds of a row's bytes and a third of its cost to write, and the decisions topic carries them all).
SCORES_KEPT = ("anomalies", "all")


def extra_numbers(decisions: pd.DataFrame, scores: str = "all") -> list[str | None]:
    """Per row, the numeric columns beyond the decision record (e.g. window_mean) as JSON, keys sorted and
    missing values left out; None for a row without any, and with ``scores`` "anomalies" for an ordinary one."""
    extra = sorted(str(name) for name in decisions.columns
                   if name not in DECISION_COLUMNS and decisions[name].dtype.kind in "iuf")
    objects: list[str | None] = [None] * len(decisions)
    if not extra:
        return objects
    if scores == "all":
        return json_objects(decisions[extra], omit_nulls=True)
    kept = np.flatnonzero(decisions["is_anomaly"].fillna(False).to_numpy(bool)) if "is_anomaly" in decisions else []
    for row, text in zip(kept, json_objects(decisions[extra].iloc[kept], omit_nulls=True)):
        objects[row] = text
    return objects


def decision_rows(decisions: pd.DataFrame, scores: str = "all") -> list[tuple]:
    """The stored rows (``STORED_COLUMNS``) of a batch, one per key (its last decision), built a column at a
    time: an absent column is null, reasons default to '' and confidence to NONE; ``scores`` as in
    ``extra_numbers``."""
    decisions = decisions.drop_duplicates(list(KEY_COLUMNS), keep="last")
    absent = [None] * len(decisions)
    columns = {name: column_values(decisions[name]) if name in decisions.columns else absent
               for name in DECISION_COLUMNS}
    columns["reasons"] = [value or "" for value in columns["reasons"]]
    columns["confidence"] = [value or "NONE" for value in columns["confidence"]]
    for name in BOOLEAN_COLUMNS:
        columns[name] = [None if value is None else bool(value) for value in columns[name]]
    columns["is_anomaly"] = [bool(value) for value in columns["is_anomaly"]]
    columns["extra"] = extra_numbers(decisions, scores)
    return list(zip(*(columns[name] for name in STORED_COLUMNS)))


def symbol_rows(rows: list[tuple]) -> list[tuple]:
    """The ``symbols`` rows of a batch of decision rows: per symbol and interval, its newest candle."""
    index = {column: STORED_COLUMNS.index(column) for column in SYMBOL_COLUMNS}
    newest: dict[tuple, tuple] = {}
    for row in rows:
        key = (row[index["symbol"]], row[index["interval"]])
        if key not in newest or row[index["open_time"]] >= newest[key][index["open_time"]]:
            newest[key] = row
    return [tuple(row[index[column]] for column in SYMBOL_COLUMNS) for row in newest.values()]


def like_pattern(text: str) -> str:
    """A LIKE pattern (with ``ESCAPE '\\'``) matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _bound_open_time(where: list[str], params: list, since: int | None, until: int | None) -> None:
    """Add the inclusive ``since <= open_time <= until`` conditions that are given."""
    for bound, operator in ((since, ">="), (until, "<=")):
        if bound is not None:
            where.append(f"open_time {operator} ?")
            params.append(int(bound))


class Database:
    """One connection shared by the job's batch thread and Spark's listener thread (hence the lock)."""

    placeholder = "?"

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.RLock()
        self._closed = False
        try:
            self._connection = self._connect()
            self.migrate()
        except DatabaseError:
            raise
        except Exception as error:  # driver errors: say which database and why, without the password
            raise DatabaseError(f"cannot open database {redact(url)}: {error}") from error

    # -- dialect ---------------------------------------------------------------------------------

    def _connect(self):
        raise NotImplementedError

    def _begin(self, cursor, migration: bool) -> None:
        """Start a transaction; a ``migration`` one excludes other migrators, in any process."""
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    @contextlib.contextmanager
    def transaction(self, migration: bool = False) -> Iterator:
        with self._lock:
            cursor = self._connection.cursor()
            self._begin(cursor, migration)
            try:
                yield cursor
            except BaseException:
                if not self._connection_lost():
                    cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def _connection_lost(self) -> bool:
        """True when the server dropped the connection (e.g. a PostgreSQL restart); a SQLite file never does."""
        return False

    def _retrying(self, action):
        """Run ``action``; when the server dropped the connection, once more on a new one (no batch lost)."""
        with self._lock:
            try:
                return action()
            except Exception:
                if self._closed or not self._connection_lost():
                    raise
                log.warning("database %s: connection lost; reconnecting", redact(self.url))
                metrics.SINK_RETRIES.labels(sink="database").inc()
                self._connection = self._connect()
                return action()

    def query(self, statement: str, params: tuple | list = ()) -> list[dict[str, object]]:
        def run():
            cursor = self._connection.cursor()
            cursor.execute(self._sql(statement), tuple(params))
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

        return self._retrying(run)

    def schema_version(self) -> int:
        rows = self.query("SELECT MAX(version) AS version FROM schema_version")
        return int(rows[0]["version"] or 0)

    def migrate(self) -> list[int]:
        """Apply the pending steps of ``MIGRATIONS``; returns the versions applied (none on re-open)."""
        applied = []
        with self.transaction(migration=True) as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS schema_version "
                           "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)")
            cursor.execute("SELECT MAX(version) FROM schema_version")
            current = cursor.fetchone()[0] or 0
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    cursor.execute(statement)
                cursor.execute(self._sql("INSERT INTO schema_version (version, description, applied_at) "
                                         "VALUES (?, ?, ?)"), (version, description, int(time.time() * 1000)))
                applied.append(version)
        if applied:
            log.info("database %s: schema migrated to version %d", redact(self.url), applied[-1])
        return applied

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._connection.close()

    # -- writes ----------------------------------------------------------------------------------

    def upsert_decisions(self, decisions: pd.DataFrame, scores: str = "all") -> int:
        """Insert or update each decision by its key, with the symbols' latest candles and the row count; one
        transaction; ``scores``: whose scores ``extra`` keeps (``SCORES_KEPT``). Returns the rows written."""
        rows = decision_rows(decisions, scores)
        if not rows:
            return 0
        keys = [tuple(row[position] for position in KEY_POSITIONS) for row in rows]

        def run():
            with self.transaction() as cursor:
                added = len(rows) - self._existing(cursor, keys)
                cursor.executemany(self._sql(UPSERT_DECISION), rows)
                cursor.executemany(self._sql(UPSERT_SYMBOL), symbol_rows(rows))
                self._count(cursor, added)

        self._retrying(run)
        return len(rows)

    def rebuild_summaries(self) -> None:
        """Recompute ``symbols`` and ``decision_counts`` from ``decisions`` (after a bulk load)."""
        with self.transaction() as cursor:
            for statement in REBUILD_SUMMARIES:
                cursor.execute(statement)

    def _existing(self, cursor, keys: list[tuple]) -> int:
        """How many of ``keys`` are already stored (by the primary key, so a batch costs milliseconds)."""
        found = 0
        for start in range(0, len(keys), KEYS_PER_LOOKUP):
            chunk = keys[start:start + KEYS_PER_LOOKUP]
            # ORed equalities, not a row-value IN: SQLite looks each up in the key's index instead of scanning it.
            keyed = " OR ".join('(symbol = ? AND "interval" = ? AND open_time = ?)' for _ in chunk)
            cursor.execute(self._sql(f"SELECT COUNT(*) FROM decisions WHERE {keyed}"),
                           [value for key in chunk for value in key])
            found += cursor.fetchone()[0]
        return found

    def _count(self, cursor, change: int) -> None:
        if change:
            cursor.execute(self._sql("UPDATE decision_counts SET decisions = decisions + ? WHERE id = 1"), (change,))

    def delete_expired(self, keep_ms: int, stop: threading.Event | None = None) -> int:
        """Delete the ordinary decisions more than ``keep_ms`` of market time older than the newest candle of any
        symbol; anomalies stay. Oldest first, about ``EXPIRY_CHUNK_CANDLES`` per transaction, along the index of
        ordinary decisions by time: the job writes a minute of every symbol together, so a chunk is a run of
        neighbouring pages (symbol by symbol, which rewrites each page once per symbol on it, an hour of 2,000
        symbols took 6.6 s instead of 3.6 s). ``stop`` set ends it after the current chunk. Returns the rows
        deleted."""
        newest = self.query("SELECT MAX(open_time) AS open_time FROM symbols")[0]["open_time"]
        if newest is None:
            return 0
        cutoff = int(newest) - int(keep_ms)
        deleted = 0
        start = self.query("SELECT MIN(open_time) AS open_time FROM decisions WHERE NOT is_anomaly")[0]["open_time"]
        while start is not None and start < cutoff and not (stop is not None and stop.is_set()):
            # The chunk ends EXPIRY_CHUNK_CANDLES rows on; it holds whole open_times, so one more minute's at most.
            after = self.query("SELECT open_time FROM decisions WHERE NOT is_anomaly AND open_time > ? "
                               "AND open_time < ? ORDER BY open_time LIMIT 1 OFFSET ?",
                               [start, cutoff, EXPIRY_CHUNK_CANDLES - 1])
            end = after[0]["open_time"] if after else cutoff
            deleted += self._delete_ordinary(start, end)
            start = end
        return deleted

    def _delete_ordinary(self, start: int, end: int) -> int:
        def run():
            with self.transaction() as cursor:
                cursor.execute(self._sql("DELETE FROM decisions WHERE NOT is_anomaly AND open_time >= ? "
                                         "AND open_time < ?"), (start, end))
                deleted = cursor.rowcount
                self._count(cursor, -deleted)
                return deleted

        return self._retrying(run)

    def save_health(self, progress: dict[str, object], query: str = "detect") -> None:
        values = {name: plain(progress.get(name)) for name in HEALTH_COLUMNS}
        values["query"] = query
        values["partitions"] = json.dumps(progress.get("partitions") or {}, sort_keys=True)
        values["sinks"] = json.dumps(progress.get("sinks") or {}, sort_keys=True)  # failing sink -> its outage
        values["at"] = values["at"] or int(time.time() * 1000)
        self._write(UPSERT_HEALTH, [tuple(values[name] for name in HEALTH_COLUMNS)])

    def _write(self, statement: str, rows: list[tuple]) -> None:
        def run():
            with self.transaction() as cursor:
                cursor.executemany(self._sql(statement), rows)

        self._retrying(run)

    # -- reads (the dashboard) -------------------------------------------------------------------

    @staticmethod
    def _decision(row: dict[str, object]) -> dict[str, object]:
        for column in BOOLEAN_COLUMNS:
            if row.get(column) is not None:
                row[column] = bool(row[column])
        extra = row.pop("extra", None)
        if extra:
            row.update({key: value for key, value in json.loads(extra).items() if key not in row})
        return row

    def recent_anomalies(self, symbol: str | None = None, min_confidence: str | None = None,
                         reason: str | None = None, since: int | None = None, until: int | None = None,
                         limit: int = 200) -> list[dict[str, object]]:
        """Anomalies newest first; ``reason`` is a case-insensitive substring; times are open_time ms."""
        where, params = ["1 = 1"], []
        if symbol:
            where.append("symbol = ?")
            params.append(symbol.upper())
        if min_confidence:
            levels = levels_at_least(min_confidence)
            where.append(f"confidence IN ({', '.join('?' for _ in levels)})")
            params.extend(levels)
        if reason:
            where.append("LOWER(reasons) LIKE ? ESCAPE '\\'")
            params.append(like_pattern(reason.lower()))
        _bound_open_time(where, params, since, until)
        rows = self.query(f"SELECT {READ_COLUMNS} FROM anomalies WHERE {' AND '.join(where)} "
                          "ORDER BY open_time DESC, symbol LIMIT ?", [*params, int(limit)])
        return [self._decision(row) for row in rows]

    def decisions(self, symbol: str, since: int | None = None, until: int | None = None,
                  limit: int = 1000) -> list[dict[str, object]]:
        """Decisions (with OHLC where stored) of one symbol in open_time order; the newest ``limit``."""
        # The symbol's intervals from ``symbols``: with them the primary key's range holds exactly these rows.
        where = ['symbol = ? AND "interval" IN (SELECT "interval" FROM symbols WHERE symbol = ?)']
        params = [symbol.upper(), symbol.upper()]
        _bound_open_time(where, params, since, until)
        rows = self.query(f"SELECT {READ_COLUMNS} FROM decisions WHERE {' AND '.join(where)} "
                          "ORDER BY open_time DESC LIMIT ?", [*params, int(limit)])
        return [self._decision(row) for row in reversed(rows)]

    def latest_open_time(self, symbol: str) -> int | None:
        rows = self.query("SELECT MAX(open_time) AS open_time FROM symbols WHERE symbol = ?", [symbol.upper()])
        return rows[0]["open_time"]

    def symbols(self, search: str = "", limit: int | None = None) -> tuple[list[str], int]:
        """Symbols containing ``search`` (case-insensitive), those starting with it first, then by name; at most
        ``limit`` of them, and how many match in all."""
        text = search.strip().upper()
        pattern = like_pattern(text)
        matches = "SELECT DISTINCT symbol FROM symbols WHERE UPPER(symbol) LIKE ? ESCAPE '\\'"
        prefix_first = "CASE WHEN UPPER(symbol) LIKE ? ESCAPE '\\' THEN 0 ELSE 1 END"
        rows = self.query(f"SELECT symbol FROM ({matches}) m ORDER BY {prefix_first}, symbol"
                          + (" LIMIT ?" if limit is not None else ""),
                          [pattern, pattern[1:], *([int(limit)] if limit is not None else [])])
        total = self.query(f"SELECT COUNT(*) AS n FROM ({matches}) m", [pattern])[0]["n"]
        return [row["symbol"] for row in rows], int(total)

    def health(self, now_ms: int | None = None, limit: int = 50,
               stale_after_ms: int = STALE_AFTER_MS) -> dict[str, object]:
        """Latest Spark progress, candles/s over the last minute (by decided_at), the symbols' counts (stale: no
        candle for ``stale_after_ms`` of market time behind the newest) and the ``limit`` furthest behind."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        progress = self.query(f"SELECT {', '.join(HEALTH_COLUMNS)} FROM pipeline_health WHERE query = 'detect'")
        if progress:
            progress[0]["partitions"] = json.loads(progress[0]["partitions"] or "{}")
            progress[0]["sinks"] = json.loads(progress[0]["sinks"] or "{}")
        recent = self.query("SELECT COUNT(*) AS n FROM decisions WHERE decided_at >= ?", [now_ms - 60_000])
        newest = self.query("SELECT MAX(open_time) AS open_time FROM symbols")[0]["open_time"]
        stale_before = (newest or 0) - stale_after_ms
        counts = self.query("SELECT COUNT(*) AS total, SUM(CASE WHEN open_time < ? THEN 1 ELSE 0 END) AS stale "
                            "FROM symbols", [stale_before])[0]
        behind = self.query(f"SELECT {SYMBOL_NAMES} FROM symbols ORDER BY open_time, symbol, \"interval\" LIMIT ?",
                            [int(limit)])
        for row in behind:
            row["behind_ms"] = newest - row["open_time"]
            row["stale"] = row["open_time"] < stale_before
        decisions = self.query("SELECT decisions FROM decision_counts WHERE id = 1")
        # Counted on the partial index of anomalies (a few per symbol-day), not over every decision.
        anomalies = self.query("SELECT COUNT(*) AS n FROM decisions WHERE is_anomaly")[0]["n"]
        total, stale = int(counts["total"]), int(counts["stale"] or 0)
        return {
            "progress": progress[0] if progress else None,
            "candles_per_second": int(recent[0]["n"]) / 60.0,
            "symbols": {"total": total, "stale": stale, "fresh": total - stale, "newest_open_time": newest,
                        "stale_after_ms": stale_after_ms},
            "last_candles": [self._decision(row) for row in behind],
            "decisions": int(decisions[0]["decisions"]) if decisions else 0,
            "anomalies": int(anomalies or 0),
            "now": now_ms,
        }


class SQLiteDatabase(Database):
    def _connect(self):
        path = self.url[len("sqlite:///"):]
        if not path:
            raise DatabaseError("sqlite URL without a path: use sqlite:///relative.db or sqlite:////abs/path.db")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit BEGIN/COMMIT; 30 s of patience on a locked file.
        connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        _use_wal(connection, patience_seconds=30)  # readers (the dashboard) never block the writer
        connection.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
        return connection

    def _begin(self, cursor, migration: bool) -> None:
        # The write lock up front: a deferred transaction that reads, then writes, fails at once
        # ("database is locked") when another connection wrote in between; IMMEDIATE waits its turn.
        cursor.execute("BEGIN IMMEDIATE")


def _use_wal(connection, patience_seconds: float) -> None:
    """Switch the file to write-ahead logging (kept in the file: later openers find it on).

    The switch needs the file to itself and, unlike other statements, fails at once instead of
    waiting when another connection holds a lock (the job and the dashboard opening a new database
    together): retried until ``patience_seconds``.
    """
    deadline = time.monotonic() + patience_seconds
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class PostgresDatabase(Database):
    placeholder = "%s"
    MIGRATION_LOCK = 7_304_117  # pg_advisory_xact_lock key: one migrator at a time

    def _connect(self):
        import psycopg

        return psycopg.connect(self.url.replace("postgres://", "postgresql://", 1), autocommit=True,
                               connect_timeout=10)

    def _begin(self, cursor, migration: bool) -> None:
        cursor.execute("BEGIN")
        if migration:
            cursor.execute(f"SELECT pg_advisory_xact_lock({self.MIGRATION_LOCK})")

    def _connection_lost(self) -> bool:
        return self._connection.broken or self._connection.closed


class DatabaseSink:
    """The job's side, durable: each micro-batch upserted in one transaction, and kept until that commits (a
    locked file or a server away fails the write, and the next ``flush`` writes it all); the latest progress kept.

    ``scores``: whose detector scores the ``extra`` column keeps (``SCORES_KEPT``).

    With ``retention_ms``, ordinary decisions older than that (market time) are deleted at the first write and
    then whenever the newest candle has moved ``EXPIRY_EVERY_MS`` on. A sweep runs in a thread on its own
    connection, beside the batches (an hour of 2,000 symbols is 120,000 rows, seconds of work); a batch waits at
    most for one of its chunks. Housekeeping never fails a batch: a failed sweep is logged, the next one
    deletes what it left."""

    name = "database"
    durable = True
    EXPIRY_EVERY_MS = 3_600_000

    def __init__(self, database: Database, retention_ms: int | None = None, scores: str = "all"):
        self.database = database
        self.retention_ms = retention_ms
        self.scores = scores
        self.written = 0
        self.expired = 0
        self._pending: list[pd.DataFrame] = []
        self._swept_at: int | None = None  # the newest open_time when the last sweep started
        self._sweep: threading.Thread | None = None
        self._stopping = threading.Event()

    def write(self, decisions: pd.DataFrame) -> None:
        self._pending.append(decisions)
        self.flush()

    def flush(self) -> None:
        if self._pending:
            pending = pd.concat(self._pending, ignore_index=True) if len(self._pending) > 1 else self._pending[0]
            newest = pending["open_time"].max() if "open_time" in pending.columns else None
            self.written += self.database.upsert_decisions(pending, self.scores)
            self._pending = []
            self._start_sweep(None if pd.isna(newest) else int(newest))

    def _start_sweep(self, newest: int | None) -> None:
        if not self.retention_ms or newest is None or (self._sweep is not None and self._sweep.is_alive()):
            return
        if self._swept_at is not None and newest - self._swept_at < self.EXPIRY_EVERY_MS:
            return
        self._swept_at = newest
        self._sweep = threading.Thread(target=self._delete_expired, name="database-retention", daemon=True)
        self._sweep.start()

    def _delete_expired(self) -> None:
        started = time.perf_counter()
        try:
            database = open_database(self.database.url)
            try:
                deleted = database.delete_expired(self.retention_ms, self._stopping)
            finally:
                database.close()
        except Exception as error:  # noqa: BLE001 - whatever it is, the next sweep tries again
            log.warning("database %s: deleting expired decisions failed: %s", redact(self.database.url), error)
            return
        self.expired += deleted
        if deleted:
            log.info("database: %d ordinary decision(s) past the retention deleted in %.2fs", deleted,
                     time.perf_counter() - started)

    def wait_for_sweep(self, timeout: float | None = None) -> None:
        """Return once the running retention sweep (if any) has ended: for callers that read its result."""
        if self._sweep is not None:
            self._sweep.join(timeout)

    def record_health(self, progress: dict[str, object]) -> None:
        if not self.database.closed:  # Spark may report the last progress after the job closed its sinks
            self.database.save_health(progress)

    def close(self) -> None:
        self._stopping.set()  # a sweep ends after its current chunk
        self.wait_for_sweep()
        self.database.close()
