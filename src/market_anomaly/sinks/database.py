"""Decisions, anomalies and pipeline health in SQLite (zero-setup default) or PostgreSQL.

``open_database(url)`` connects and brings the schema up to date: ``MIGRATIONS`` are
ordered SQL steps, the same SQL for both databases, applied once each and recorded in
``schema_version`` under a write lock, so the job and the dashboard may open the same
database at the same time. URLs: ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db``,
``postgresql://user:password@host:port/dbname``.

Writes are upserts on ``(symbol, interval, open_time)``: a replayed candle or a restarted
job updates its row, never adds one. One transaction per micro-batch. SQLite runs in WAL
mode so the dashboard reads while the job writes.
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

import pandas as pd

from market_anomaly import metrics
from market_anomaly.config import redact
from market_anomaly.sinks.common import DECISION_COLUMNS, levels_at_least, plain, to_records

log = logging.getLogger(__name__)

KEY_COLUMNS = ("symbol", "interval", "open_time")
BOOLEAN_COLUMNS = ("is_anomaly", "market_event")

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
)

STORED_COLUMNS = DECISION_COLUMNS + ("extra",)
READ_COLUMNS = ", ".join(f'"{column}"' for column in STORED_COLUMNS)
UPSERT_DECISION = (
    f"INSERT INTO decisions ({READ_COLUMNS}) VALUES ({', '.join('?' for _ in STORED_COLUMNS)}) "
    f"ON CONFLICT (symbol, \"interval\", open_time) DO UPDATE SET "
    + ", ".join(f'"{column}" = excluded."{column}"' for column in STORED_COLUMNS if column not in KEY_COLUMNS)
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


def extra_numbers(record: dict[str, object]) -> str | None:
    """Numeric columns beyond the decision record (e.g. window_mean), kept as JSON."""
    extra = {key: value for key, value in record.items()
             if key not in DECISION_COLUMNS and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return json.dumps(extra, sort_keys=True) if extra else None


def decision_row(record: dict[str, object]) -> tuple:
    values = {column: record.get(column) for column in DECISION_COLUMNS}
    values["reasons"] = values["reasons"] or ""
    values["confidence"] = values["confidence"] or "NONE"
    for column in BOOLEAN_COLUMNS:
        values[column] = None if values[column] is None else bool(values[column])
    values["is_anomaly"] = bool(values["is_anomaly"])
    values["extra"] = extra_numbers(record)
    return tuple(values[column] for column in STORED_COLUMNS)


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

    def upsert_decisions(self, records: list[dict[str, object]]) -> int:
        """Insert or update each decision by its key; one transaction. Returns the rows written."""
        latest = {tuple(record.get(key) for key in KEY_COLUMNS): record for record in records}
        rows = [decision_row(record) for record in latest.values()]
        if rows:
            self._write(UPSERT_DECISION, rows)
        return len(rows)

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
            escaped = reason.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("LOWER(reasons) LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        _bound_open_time(where, params, since, until)
        rows = self.query(f"SELECT {READ_COLUMNS} FROM anomalies WHERE {' AND '.join(where)} "
                          "ORDER BY open_time DESC, symbol LIMIT ?", [*params, int(limit)])
        return [self._decision(row) for row in rows]

    def decisions(self, symbol: str, since: int | None = None, until: int | None = None,
                  limit: int = 1000) -> list[dict[str, object]]:
        """Decisions (with OHLC where stored) of one symbol in open_time order; the newest ``limit``."""
        where, params = ["symbol = ?"], [symbol.upper()]
        _bound_open_time(where, params, since, until)
        rows = self.query(f"SELECT {READ_COLUMNS} FROM decisions WHERE {' AND '.join(where)} "
                          "ORDER BY open_time DESC LIMIT ?", [*params, int(limit)])
        return [self._decision(row) for row in reversed(rows)]

    def latest_open_time(self, symbol: str) -> int | None:
        rows = self.query("SELECT MAX(open_time) AS open_time FROM decisions WHERE symbol = ?", [symbol.upper()])
        return rows[0]["open_time"]

    def symbols(self) -> list[str]:
        return [row["symbol"] for row in self.query("SELECT DISTINCT symbol FROM decisions ORDER BY symbol")]

    def health(self, now_ms: int | None = None) -> dict[str, object]:
        """Latest Spark progress, candles/s over the last minute (by decided_at), last candle per symbol."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        progress = self.query(f"SELECT {', '.join(HEALTH_COLUMNS)} FROM pipeline_health WHERE query = 'detect'")
        if progress:
            progress[0]["partitions"] = json.loads(progress[0]["partitions"] or "{}")
            progress[0]["sinks"] = json.loads(progress[0]["sinks"] or "{}")
        recent = self.query("SELECT COUNT(*) AS n FROM decisions WHERE decided_at >= ?", [now_ms - 60_000])
        last_candles = self.query(
            'SELECT d.symbol, d."interval", d.open_time, d.close, d.is_anomaly, d.confidence, d.decided_at '
            'FROM decisions d JOIN (SELECT symbol, "interval", MAX(open_time) AS open_time FROM decisions '
            'GROUP BY symbol, "interval") latest '
            'ON d.symbol = latest.symbol AND d."interval" = latest."interval" AND d.open_time = latest.open_time '
            "ORDER BY d.symbol"
        )
        totals = self.query("SELECT COUNT(*) AS decisions, "
                            "SUM(CASE WHEN is_anomaly THEN 1 ELSE 0 END) AS anomalies FROM decisions")[0]
        return {
            "progress": progress[0] if progress else None,
            "candles_per_second": int(recent[0]["n"]) / 60.0,
            "last_candles": [self._decision(row) for row in last_candles],
            "decisions": int(totals["decisions"] or 0),
            "anomalies": int(totals["anomalies"] or 0),
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
    locked file or a server away fails the write, and the next ``flush`` writes it all); the latest progress kept."""

    name = "database"
    durable = True

    def __init__(self, database: Database):
        self.database = database
        self.written = 0
        self._pending: list[dict[str, object]] = []

    def write(self, decisions: pd.DataFrame) -> None:
        self._pending += to_records(decisions)
        self.flush()

    def flush(self) -> None:
        if self._pending:
            self.written += self.database.upsert_decisions(self._pending)
            self._pending = []

    def record_health(self, progress: dict[str, object]) -> None:
        if not self.database.closed:  # Spark may report the last progress after the job closed its sinks
            self.database.save_health(progress)

    def close(self) -> None:
        self.database.close()
