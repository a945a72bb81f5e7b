"""The database sink against SQLite and a real PostgreSQL server: schema, idempotent upserts, dashboard reads."""

from __future__ import annotations

import sqlite3
import threading

import pandas as pd
import pytest

from market_anomaly.sinks import database as database_module
from market_anomaly.sinks.database import MIGRATIONS, DatabaseError, DatabaseSink, decision_rows, open_database

pytestmark = pytest.mark.integration

LATEST_VERSION = MIGRATIONS[-1][0]


@pytest.fixture
def database(database_url):
    database = open_database(database_url)
    yield database
    database.close()


def count(database, table: str = "decisions") -> int:
    return database.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]


def test_schema_is_created_and_reopening_applies_nothing(database_url):
    first = open_database(database_url)
    assert first.schema_version() == LATEST_VERSION
    first.close()
    again = open_database(database_url)
    assert again.migrate() == []
    assert again.query("SELECT COUNT(*) AS n FROM schema_version")[0]["n"] == len(MIGRATIONS)
    assert count(again) == 0 and count(again, "anomalies") == 0 and count(again, "pipeline_health") == 0
    again.close()


def test_the_stored_columns_are_the_decision_records(database):
    from market_anomaly.sinks.common import DECISION_COLUMNS, DECISION_RECORD
    from market_anomaly.sinks.database import STORED_COLUMNS

    cursor = database._connection.cursor()
    cursor.execute("SELECT * FROM decisions WHERE 1 = 0")
    columns = [column[0] for column in cursor.description]
    assert sorted(columns) == sorted(STORED_COLUMNS)
    assert set(DECISION_COLUMNS) <= {name for name, _ in DECISION_RECORD}  # named ones come from the record


def test_a_failed_write_keeps_the_batch_for_the_next_flush(tmp_path, market_frame):
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    sink = DatabaseSink(open_database(url))
    lock = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sink.write(market_frame)  # waits out the 30 s busy timeout
    lock.execute("COMMIT")
    sink.flush()
    assert count(sink.database) == len(market_frame) == sink.written
    sink.flush()  # nothing pending: nothing written twice
    assert sink.written == len(market_frame)
    sink.close()


def test_new_sqlite_files_opened_together_never_report_locked(tmp_path):
    """The switch to write-ahead logging fails at once on a locked file (no busy wait); openers retry it.
    One round lost it about one time in ten; fifty rounds make a regression near certain to show."""
    for round_number in range(50):
        errors, opened = open_together(f"sqlite:///{tmp_path / f'race{round_number}.db'}", openers=4)
        for database in opened:
            database.close()
        assert errors == [], f"round {round_number}"


def open_together(url: str, openers: int) -> tuple[list[Exception], list]:
    """``openers`` threads open ``url`` at once: (their errors, the databases they opened)."""
    errors, opened = [], []

    def open_one():
        try:
            opened.append(open_database(url))
        except Exception as error:  # noqa: BLE001 - the caller's assertion reports it
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors, opened


def test_concurrent_openers_migrate_once(database_url):
    """The job and the dashboard start together: both open the new database, the schema is made once."""
    errors, opened = open_together(database_url, openers=3)
    assert errors == []
    assert opened[0].query("SELECT COUNT(*) AS n FROM schema_version")[0]["n"] == len(MIGRATIONS)
    for database in opened:
        database.close()


def test_replaying_the_same_batch_twice_writes_each_candle_once(database, market_frame):
    sink = DatabaseSink(database)
    sink.write(market_frame)
    sink.write(market_frame)  # the job restarted from an older checkpoint
    sink.write(market_frame.iloc[10:25])  # an overlapping partial replay
    assert count(database) == len(market_frame) == 60
    assert count(database, "anomalies") == 3
    keys = database.query('SELECT symbol, "interval", open_time, COUNT(*) AS n FROM decisions '
                          'GROUP BY symbol, "interval", open_time HAVING COUNT(*) > 1')
    assert keys == []


def test_upsert_updates_values_and_nan_becomes_null(database, make_decision):
    sink = DatabaseSink(database)
    sink.write(pd.DataFrame([make_decision("SOLUSDT", 0, 150.0, return_pct=float("nan"))]))
    sink.write(pd.DataFrame([make_decision("SOLUSDT", 0, 151.5, anomaly=True, confidence="MEDIUM",
                                           reasons="Z-SCORE 5.0σ", return_pct=2.5)]))
    [row] = database.decisions("SOLUSDT")
    assert row["close"] == 151.5 and row["return_pct"] == 2.5
    assert row["is_anomaly"] is True and row["confidence"] == "MEDIUM" and row["reasons"] == "Z-SCORE 5.0σ"
    sink.write(pd.DataFrame([make_decision("SOLUSDT", 1, 152.0, return_pct=float("nan"))]))
    assert database.decisions("SOLUSDT")[1]["return_pct"] is None


def test_unknown_columns_are_kept_when_numeric_and_ignored_otherwise(database, make_decision):
    frame = pd.DataFrame([make_decision("ADAUSDT", 0, 0.51, market_event=True, window_mean=0.5,
                                        window_std=0.01, note="text is not stored")])
    DatabaseSink(database).write(frame)
    [row] = database.decisions("ADAUSDT")
    assert row["window_mean"] == 0.5 and row["window_std"] == 0.01 and row["market_event"] is True
    assert "note" not in row


def test_with_the_anomalies_scores_an_ordinary_decision_comes_back_without_scores(database, make_decision):
    frame = pd.DataFrame([make_decision("ADAUSDT", 0, 0.51, window_mean=0.5, surprise=1.2),
                          make_decision("ADAUSDT", 1, 0.61, True, "HIGH", "Z-SCORE 9.1σ", window_mean=0.6, surprise=7.5)])
    DatabaseSink(database, scores="anomalies").write(frame)
    ordinary, anomaly = database.decisions("ADAUSDT")
    assert ordinary["close"] == 0.51 and "window_mean" not in ordinary and "surprise" not in ordinary
    assert (anomaly["window_mean"], anomaly["surprise"]) == (0.6, 7.5)
    [listed] = database.recent_anomalies(symbol="ADAUSDT")
    assert listed["surprise"] == 7.5 and listed["reasons"] == "Z-SCORE 9.1σ"


def test_missing_ohlc_columns_are_stored_as_null(database, make_decision):
    record = make_decision("XRPUSDT", 0, 2.1)
    for column in ("open", "high", "low"):
        del record[column]
    DatabaseSink(database).write(pd.DataFrame([record]))
    [row] = database.decisions("XRPUSDT")
    assert (row["open"], row["high"], row["low"], row["close"]) == (None, None, None, 2.1)


def test_anomaly_filters(database, market_frame):
    DatabaseSink(database).write(market_frame)
    anomalies = database.recent_anomalies()
    assert [(a["symbol"], a["confidence"]) for a in anomalies] == [
        ("BTCUSDT", "MEDIUM"), ("ETHUSDT", "LOW"), ("BTCUSDT", "HIGH")]  # newest first
    assert [a["reasons"] for a in database.recent_anomalies(symbol="btcusdt")] == [
        "VOLATILITY 4.1σ", "Z-SCORE 7.2σ | VOLUME 14x"]
    assert [a["confidence"] for a in database.recent_anomalies(min_confidence="MEDIUM")] == ["MEDIUM", "HIGH"]
    assert [a["symbol"] for a in database.recent_anomalies(reason="volume")] == ["ETHUSDT", "BTCUSDT"]
    assert database.recent_anomalies(reason="100%") == []  # LIKE wildcards in the filter are literal
    minute = 60_000
    start = int(market_frame["open_time"].min())
    window = database.recent_anomalies(since=start + 13 * minute, until=start + 24 * minute)
    assert [a["symbol"] for a in window] == ["ETHUSDT"]
    assert len(database.recent_anomalies(limit=1)) == 1


def test_candles_symbols_and_health(database, market_frame):
    sink = DatabaseSink(database)
    sink.write(market_frame)
    sink.record_health({"batch_id": 7, "input_rows": 60, "processed_rows_per_second": 120.5,
                        "batch_duration_ms": 480, "partitions": {"crypto-candles:0": {"end_offset": 41}},
                        "at": 1_769_285_900_000})
    sink.record_health({"batch_id": 8, "input_rows": 2, "processed_rows_per_second": 10.0,
                        "batch_duration_ms": 200, "partitions": {"crypto-candles:0": {"end_offset": 43}},
                        "at": 1_769_285_910_000})
    assert database.symbols() == (["BTCUSDT", "ETHUSDT"], 2)
    start = int(market_frame["open_time"].min())
    candles = database.decisions("BTCUSDT", since=start + 10 * 60_000, until=start + 14 * 60_000)
    assert [c["open_time"] for c in candles] == [start + m * 60_000 for m in range(10, 15)]
    assert candles[2]["is_anomaly"] is True and candles[2]["high"] == pytest.approx(candles[2]["close"] * 1.002)
    assert [c["open_time"] for c in database.decisions("BTCUSDT", limit=3)] == [
        start + m * 60_000 for m in (27, 28, 29)]
    assert database.latest_open_time("BTCUSDT") == start + 29 * 60_000

    health = database.health()
    assert health["progress"]["batch_id"] == 8  # only the latest progress is kept
    assert health["progress"]["partitions"] == {"crypto-candles:0": {"end_offset": 43}}
    assert count(database, "pipeline_health") == 1
    assert health["candles_per_second"] == pytest.approx(60 / 60)  # all decided just now
    assert [(c["symbol"], c["open_time"], c["behind_ms"], c["stale"]) for c in health["last_candles"]] == [
        ("BTCUSDT", start + 29 * 60_000, 0, False), ("ETHUSDT", start + 29 * 60_000, 0, False)]
    assert health["symbols"] == {"total": 2, "stale": 0, "fresh": 2, "newest_open_time": start + 29 * 60_000,
                                 "stale_after_ms": 180_000}
    assert (health["decisions"], health["anomalies"]) == (60, 3)
    assert database.health(now_ms=int(market_frame["decided_at"].max()) + 61_000)["candles_per_second"] == 0


def minutes_of(make_decision, symbols: dict[str, int], anomalies: set[tuple[str, int]] = frozenset(),
               first: int = 0) -> pd.DataFrame:
    """Decisions of each symbol from minute ``first`` to its minute in ``symbols``; ``anomalies``: (symbol, minute)."""
    return pd.DataFrame([make_decision(symbol, minute, 100.0 + minute, (symbol, minute) in anomalies)
                         for symbol, last in symbols.items() for minute in range(first, last + 1)])


def test_health_puts_lagging_and_stale_symbols_first_with_counts(database, make_decision):
    DatabaseSink(database).write(minutes_of(make_decision, {"BTCUSDT": 60, "ETHUSDT": 59, "SOLUSDT": 50,
                                                            "ADAUSDT": 40, "XRPUSDT": 60}))
    health = database.health(limit=3)
    assert health["symbols"]["total"] == 5 and health["symbols"]["stale"] == 2 and health["symbols"]["fresh"] == 3
    assert [(c["symbol"], c["behind_ms"] // 60_000, c["stale"]) for c in health["last_candles"]] == [
        ("ADAUSDT", 20, True), ("SOLUSDT", 10, True), ("ETHUSDT", 1, False)]
    assert database.health(stale_after_ms=15 * 60_000)["symbols"]["stale"] == 1
    # A replayed older candle never moves a symbol's latest one back.
    DatabaseSink(database).write(minutes_of(make_decision, {"BTCUSDT": 10}, first=5))
    assert database.latest_open_time("BTCUSDT") == database.health()["symbols"]["newest_open_time"]
    assert database.health()["decisions"] == count(database) == 61 + 60 + 51 + 41 + 61


def test_symbols_are_searched_case_insensitively_prefix_first_and_limited(database, make_decision):
    names = ["BTCUSDT", "ETHBTC", "ETHUSDT", "WBTCUSDT", "SOLUSDT", "A_BUSDT"]
    DatabaseSink(database).write(minutes_of(make_decision, {name: 0 for name in names}))
    assert database.symbols("btc") == (["BTCUSDT", "ETHBTC", "WBTCUSDT"], 3)  # starting with it, then containing
    assert database.symbols("Eth", limit=1) == (["ETHBTC"], 2)
    assert database.symbols("", limit=2) == (["A_BUSDT", "BTCUSDT"], 6)
    assert database.symbols("_b") == (["A_BUSDT"], 1)  # LIKE's wildcards are plain characters
    assert database.symbols("%") == ([], 0)


def test_retention_deletes_old_ordinary_decisions_in_chunks_and_keeps_anomalies(database, make_decision, monkeypatch):
    monkeypatch.setattr(database_module, "EXPIRY_CHUNK_CANDLES", 7)  # many chunks per symbol
    chunks = []
    delete = type(database)._delete_ordinary  # the sweep runs on a connection of its own
    monkeypatch.setattr(type(database), "_delete_ordinary", lambda self, *a: chunks.append(a) or delete(self, *a))
    sink = DatabaseSink(database, retention_ms=60 * 60_000)  # an hour
    sink.write(minutes_of(make_decision, {"BTCUSDT": 150, "ETHUSDT": 100},
                          anomalies={("BTCUSDT", 3), ("BTCUSDT", 120), ("ETHUSDT", 89)}))
    sink.wait_for_sweep()
    # The newest candle is BTCUSDT's minute 150: ordinary decisions before minute 90 are gone, for both symbols.
    rows = database.query('SELECT symbol, open_time, is_anomaly FROM decisions ORDER BY symbol, open_time')
    kept = {(row["symbol"], (row["open_time"] - rows[0]["open_time"] + 3 * 60_000) // 60_000) for row in rows
            if row["open_time"] < database.latest_open_time("BTCUSDT") - 60 * 60_000}
    assert kept == {("BTCUSDT", 3), ("ETHUSDT", 89)}  # only the anomalies stay behind the cutoff
    assert count(database) == 61 + 11 + 2 and sink.expired == 89 + 89
    assert database.health()["decisions"] == count(database) and count(database, "anomalies") == 3
    # Chunks of 7 rows after the first minute's (2 symbols a minute here): at most 4 minutes each.
    assert all(end - start <= 4 * 60_000 for start, end in chunks) and len(chunks) >= 178 // 9
    # Within the next market hour nothing is swept again; an hour later, the hour that fell out goes.
    chunks.clear()
    sink.write(minutes_of(make_decision, {"BTCUSDT": 200}, first=151))
    sink.wait_for_sweep()
    assert chunks == [] and count(database) == 61 + 11 + 2 + 50
    sink.write(minutes_of(make_decision, {"BTCUSDT": 215}, first=201))
    sink.wait_for_sweep()
    # The cutoff is now minute 155: BTCUSDT keeps minutes 155-215 and its anomalies at 3 and 120, ETHUSDT its anomaly.
    assert count(database) == 61 + 2 + 1
    assert database.symbols() == (["BTCUSDT", "ETHUSDT"], 2)  # a symbol stays listed (with its anomalies)


def test_no_retention_keeps_everything(database, make_decision):
    sink = DatabaseSink(database, retention_ms=None)
    sink.write(minutes_of(make_decision, {"BTCUSDT": 3000}))
    sink.wait_for_sweep()
    assert count(database) == 3001 and sink.expired == 0


def test_a_sweep_stops_after_its_chunk_when_the_sink_closes(database_url, make_decision, monkeypatch):
    monkeypatch.setattr(database_module, "EXPIRY_CHUNK_CANDLES", 10)
    sink = DatabaseSink(open_database(database_url), retention_ms=60_000)
    started, release = threading.Event(), threading.Event()
    delete = database_module.Database._delete_ordinary

    def slow_delete(self, *bounds):
        started.set()
        release.wait(10)
        return delete(self, *bounds)

    monkeypatch.setattr(database_module.Database, "_delete_ordinary", slow_delete)
    sink.write(minutes_of(make_decision, {"BTCUSDT": 500}))
    assert started.wait(10)
    closing = threading.Thread(target=sink.close)
    closing.start()
    assert sink._stopping.wait(10)  # close has asked the sweep to stop; now the chunk under way may finish
    release.set()
    closing.join(10)
    assert not closing.is_alive() and sink.expired == 10  # that one chunk: minutes 0-9
    reopened = open_database(database_url)
    assert count(reopened) == 501 - 10 == reopened.health()["decisions"]
    reopened.close()


def test_migrating_an_existing_database_fills_the_symbols_and_the_count(database_url, make_decision, monkeypatch):
    monkeypatch.setattr(database_module, "MIGRATIONS", MIGRATIONS[:2])  # a database of the previous release
    old = open_database(database_url)
    with old.transaction() as cursor:
        cursor.executemany(old._sql(database_module.UPSERT_DECISION), decision_rows(
            minutes_of(make_decision, {"BTCUSDT": 30, "ETHUSDT": 20}, anomalies={("ETHUSDT", 4)})))
    old.close()
    monkeypatch.setattr(database_module, "MIGRATIONS", MIGRATIONS)
    database = open_database(database_url)
    assert database.schema_version() == LATEST_VERSION
    health = database.health()
    assert (health["decisions"], health["anomalies"], health["symbols"]["total"]) == (52, 1, 2)
    assert [(c["symbol"], c["behind_ms"] // 60_000) for c in health["last_candles"]] == [("ETHUSDT", 10),
                                                                                        ("BTCUSDT", 0)]
    assert len(database.decisions("ETHUSDT")) == 21
    database.close()


def test_the_dashboards_queries_use_indexes_on_sqlite(tmp_path, make_decision):
    """EXPLAIN QUERY PLAN of each dashboard read: an index search, never a scan of ``decisions`` itself."""
    database = open_database(f"sqlite:///{tmp_path / 'plans.db'}")
    DatabaseSink(database).write(minutes_of(make_decision, {"BTCUSDT": 30, "ETHUSDT": 30}, anomalies={("BTCUSDT", 5)}))
    statements = []
    query = database.query
    database.query = lambda sql, params=(): statements.append((sql, list(params))) or query(sql, params)
    database.recent_anomalies()
    database.recent_anomalies(symbol="BTCUSDT", min_confidence="MEDIUM", reason="z-score")
    database.decisions("BTCUSDT", since=0, until=2**62)
    database.latest_open_time("BTCUSDT")
    database.symbols("bt", limit=10)
    database.health()
    database.delete_expired(10 * 60_000)
    database.query = query
    plans = {statement: " / ".join(row["detail"] for row in query("EXPLAIN QUERY PLAN " + statement, params))
             for statement, params in statements}
    for statement, plan in plans.items():
        counted_on_the_anomalies = plan.replace("SCAN decisions USING INDEX decisions_anomalies", "")
        assert "SCAN decisions" not in counted_on_the_anomalies, (statement, plan)
    used = " ".join(plans.values())
    for index in ("decisions_anomalies", "decisions_anomalies_by_symbol", "sqlite_autoindex_decisions_1",
                  "decisions_decided_at", "sqlite_autoindex_symbols_1", "decisions_ordinary"):
        assert index in used, index
    database.close()


def test_a_dropped_postgresql_connection_is_reopened_without_losing_the_batch(postgres_url, postgres_server,
                                                                           market_frame):
    import psycopg

    database = open_database(postgres_url)
    sink = DatabaseSink(database)
    sink.write(market_frame.iloc[:10])
    backend = database.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    with psycopg.connect(postgres_server, autocommit=True) as admin:  # what a server restart does to clients
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
    sink.write(market_frame.iloc[10:])
    assert count(database) == 60
    sink.close()
    sink.record_health({"batch_id": 1})  # late progress after close: ignored, not an error


def test_sqlite_uses_wal_so_the_dashboard_reads_while_the_job_writes(tmp_path, market_frame):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    writer = open_database(url)
    reader = open_database(url)
    with writer.transaction() as cursor:  # the job mid-batch, transaction open
        cursor.execute("DELETE FROM decisions")
        assert reader.symbols() == ([], 0)  # a reader is not blocked by the open write transaction
    assert sqlite3.connect(tmp_path / "live.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer.close()
    reader.close()


def test_bad_urls_fail_clearly_at_startup(tmp_path, postgres_server):
    with pytest.raises(DatabaseError, match="unsupported database URL"):
        open_database("mysql://localhost/db")
    with pytest.raises(DatabaseError, match=r"cannot open database postgresql://postgres:\*\*\*@"):
        open_database(postgres_server.replace("postgres@", "postgres:s3cret@").rsplit("/", 1)[0] + "/no_such_db")
