"""The dashboard's API on a database of Binance's size: 2,000 symbols x a week of 1m decisions.

Builds a database of ``--symbols`` symbols x ``--days`` days of one-minute decisions
(2,000 x 7 = 20.2 million rows; prices a random walk, a few anomalies per symbol-day at LOW,
MEDIUM and HIGH), written minute by minute across all symbols as the job writes them, an hour at
a time (SQLite ``executemany``, PostgreSQL ``COPY``), one transaction per day, then the symbols
table and the row count from ``Database.rebuild_summaries``. SQLite by default: ``--database PATH``
keeps it there and reuses it on the next run (built when missing); ``--postgres [URL]`` uses that
PostgreSQL database (built when it has no decisions) or, without a URL, a throwaway server. Then
starts the real ``market-anomaly dashboard`` over it and times
``--requests`` sequential requests per endpoint (after two untimed ones):

- ``/api/health`` (the 50 symbols furthest behind, counts), ``/api/anomalies`` (the newest 200),
  ``/api/anomalies?symbol=`` (one symbol's), ``/api/candles?symbol=`` (one symbol, the default
  two hours), ``/api/symbols`` (the first 100) and ``/api/symbols?q=`` (substrings of real names);

and prints one JSON object: p50/p99/max milliseconds per endpoint, the database's size and rows.
With ``--job-side``, then also the job's side at this size: ``upsert_decisions`` of the next
minute of every symbol (what the database sink does per live micro-batch; five minutes appended,
the median), a retention sweep with nothing to delete, and one that deletes the oldest hour of
ordinary decisions (the hourly sweep's work at 2,000 symbols). A reused database is then five
minutes longer and an hour shorter.

    .venv/bin/python bench/dashboard_queries.py [--database var/bench-dashboard.db | --postgres [URL]] [--requests 50] [--job-side]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from market_anomaly.kafka.broker import free_port
from market_anomaly.sinks.database import READ_COLUMNS, STORED_COLUMNS, SQLiteDatabase, open_database

MINUTE_MS = 60_000
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
ANOMALIES_PER_SYMBOL_DAY = 2.0  # about what the detector flags on real markets (README: ~0.9 false alarms a day)
CONFIDENCES = (("LOW", 0.5), ("MEDIUM", 0.35), ("HIGH", 0.15))
REASONS = ("Z-SCORE 6.8σ", "VOLUME 14x", "VOLATILITY 4.2σ", "Z-SCORE 9.1σ | VOLUME 22x", "RUN 5m VOLUME 4x")
INSERT = f"INSERT INTO decisions ({READ_COLUMNS}) VALUES ({', '.join('?' for _ in STORED_COLUMNS)})"


def symbol_names(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct Binance-like names: 2-6 letters and a quote asset (mostly USDT)."""
    names: set[str] = set()
    letters = np.array(list(string.ascii_uppercase))
    while len(names) < count:
        base = "".join(rng.choice(letters, rng.integers(2, 7)))
        names.add(base + rng.choice(["USDT"] * 6 + ["BTC", "ETH", "FDUSD", "TRY"]))
    return sorted(names)


def build(url: str, symbols: int, days: int, seed: int = 7) -> dict[str, object]:
    """Write the database at ``url``; returns what was built and how long it took."""
    rng = np.random.default_rng(seed)
    names = symbol_names(symbols, rng)
    started = time.perf_counter()
    database = open_database(url)
    if isinstance(database, SQLiteDatabase):
        database._connection.execute("PRAGMA synchronous=OFF")  # a bulk load: a crash means rebuilding anyway
        database._connection.execute("PRAGMA cache_size=-262144")  # 256 MiB: the key index's hot pages in memory
    price = np.exp(rng.uniform(np.log(0.01), np.log(50_000), symbols))
    minutes = 24 * 60
    anomalies = 0
    for day in range(days):
        open_times = START_MS + (day * minutes + np.arange(minutes)) * MINUTE_MS
        returns = rng.standard_t(4, (minutes, symbols)) * 0.0015
        closes = price * np.exp(np.cumsum(returns, axis=0))
        opens = np.vstack([price, closes[:-1]])
        price = closes[-1]
        spread = np.abs(rng.normal(0, 0.001, (minutes, symbols)))
        highs, lows = np.maximum(opens, closes) * (1 + spread), np.minimum(opens, closes) * (1 - spread)
        volumes = rng.lognormal(3, 1, (minutes, symbols))
        flagged = rng.random((minutes, symbols)) < ANOMALIES_PER_SYMBOL_DAY / minutes
        anomalies += int(flagged.sum())
        confidence = np.where(flagged, rng.choice([c for c, _ in CONFIDENCES], (minutes, symbols),
                                                  p=[p for _, p in CONFIDENCES]), "NONE")
        reasons = np.where(flagged, rng.choice(REASONS, (minutes, symbols)), "")
        columns = {  # minute-major, as the job writes: every symbol's candle of a minute, then the next minute
            "symbol": np.tile(names, minutes), "interval": np.full(minutes * symbols, "1m"),
            "open_time": np.repeat(open_times, symbols), "close_time": np.repeat(open_times + MINUTE_MS - 1, symbols),
            "open": opens.ravel(), "high": highs.ravel(), "low": lows.ravel(), "close": closes.ravel(),
            "return_pct": (returns * 100).ravel(), "log_return": returns.ravel(),
            "range_pct": ((highs - lows) / lows * 100).ravel(), "volume": volumes.ravel(),
            "volume_ratio": (volumes / np.exp(3)).ravel(), "zscore": (returns / 0.0015).ravel(),
            "votes": np.where(flagged, rng.integers(2, 5, (minutes, symbols)), 0).ravel(),
            "is_anomaly": flagged.ravel(), "confidence": confidence.ravel(), "reasons": reasons.ravel(),
            "market_event": np.zeros(minutes * symbols, bool),
            "produced_at": np.repeat(open_times + MINUTE_MS + 40, symbols),
            "decided_at": np.repeat(open_times + MINUTE_MS + 1_500, symbols),
        }
        with database.transaction() as cursor:
            for hour in range(24):  # Python rows an hour at a time: a day's would take gigabytes
                part = slice(hour * 60 * symbols, (hour + 1) * 60 * symbols)
                rows = zip(*(columns[name][part].tolist() if name in columns else [None] * (60 * symbols)
                             for name in STORED_COLUMNS))
                if isinstance(database, SQLiteDatabase):
                    cursor.executemany(INSERT, rows)
                else:  # PostgreSQL: COPY, some 10x faster than INSERTs
                    with cursor.copy(f"COPY decisions ({READ_COLUMNS}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
        print(f"day {day + 1}/{days} written ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    database.rebuild_summaries()
    database.save_health({"batch_id": days * minutes, "input_rows": symbols, "processed_rows_per_second": 2_000.0,
                          "batch_duration_ms": 900, "partitions": {}, "at": int(time.time() * 1000)})
    if not isinstance(database, SQLiteDatabase):
        database._connection.execute("ANALYZE")  # the planner's statistics, as autovacuum gathers them in time
    database.close()
    return {"built_seconds": round(time.perf_counter() - started, 1), "anomalies_written": anomalies}


def job_side(url: str) -> dict[str, object]:
    """Time ``upsert_decisions`` of five new minutes of every symbol, then ``delete_expired`` with nothing to
    delete and deleting the oldest hour of ordinary decisions."""
    database = open_database(url)
    symbols, _ = database.symbols(limit=100_000)
    writes = []
    for _ in range(5):
        open_time = database.health()["symbols"]["newest_open_time"] + MINUTE_MS
        decisions = pd.DataFrame([{"symbol": symbol, "interval": "1m", "open_time": open_time, "close_time": open_time + MINUTE_MS - 1,
                    "open": 1.0, "high": 1.01, "low": 0.99, "close": 1.0, "return_pct": 0.0, "log_return": 0.0,
                    "range_pct": 2.0, "volume": 10.0, "volume_ratio": 1.0, "zscore": 0.1, "votes": 0,
                    "is_anomaly": False, "confidence": "NONE", "reasons": "", "market_event": False,
                    "produced_at": open_time + MINUTE_MS + 40, "decided_at": open_time + MINUTE_MS + 1_500,
                    "window_mean": 0.0, "surprise": 0.5} for symbol in symbols])
        started = time.perf_counter()
        database.upsert_decisions(decisions)
        writes.append(time.perf_counter() - started)
    span = database.health()["symbols"]["newest_open_time"] - database.query(
        "SELECT MIN(open_time) AS t FROM decisions WHERE NOT is_anomaly")[0]["t"]
    started = time.perf_counter()
    nothing = database.delete_expired(span + MINUTE_MS)
    idle = time.perf_counter() - started
    started = time.perf_counter()
    deleted = database.delete_expired(span - 59 * MINUTE_MS)
    busy = time.perf_counter() - started
    database.close()
    assert nothing == 0
    return {"write_minute_ms": round(float(np.median(writes)) * 1000, 1), "write_minute_rows": len(symbols),
            "sweep_nothing_seconds": round(idle, 2), "sweep_hour_seconds": round(busy, 2), "sweep_hour_rows": deleted}


def fetch_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        assert response.status == 200, url
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=Path, default=None,
                        help="SQLite: keep the database here and reuse it when present (default: a temporary one)")
    parser.add_argument("--postgres", nargs="?", const="server", default=None, metavar="URL",
                        help="PostgreSQL instead: this database (built when it has no decisions), or without a URL "
                             "a throwaway server from scripts/postgres-test-server.sh")
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint (default: 50)")
    parser.add_argument("--job-side", action="store_true",
                        help="also time the job's writes of a minute and the hourly retention sweep "
                             "(changes the database)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    server_dir = None
    if args.postgres == "server":  # the server runs as 'postgres' under root: a directory it can reach
        server_dir = tempfile.mkdtemp(prefix="bench-dashboard-pg-")
        url = subprocess.run([str(Path(__file__).parents[1] / "scripts" / "postgres-test-server.sh"), "start",
                              server_dir], check=True, capture_output=True, text=True).stdout.split()[-1]
    elif args.postgres:
        url = args.postgres
    else:
        path = (args.database or scratch / "anomalies.db").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    report: dict[str, object] = {"database": url.split(":", 1)[0], "symbols": args.symbols, "days": args.days}
    try:
        database = open_database(url)
        empty = database.health(limit=1)["decisions"] == 0
        database.close()
        if empty:
            report.update(build(url, args.symbols, args.days))
        database = open_database(url)
        health = database.health(limit=1)
        symbols, _ = database.symbols(limit=args.symbols)
        if isinstance(database, SQLiteDatabase):
            report["db_bytes"] = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        else:
            report["db_bytes"] = database.query("SELECT pg_database_size(current_database()) AS size")[0]["size"]
        database.close()
        report.update(rows=health["decisions"], anomalies=health["anomalies"], symbols=health["symbols"]["total"])
        report["db_gib"] = round(report["db_bytes"] / 2 ** 30, 2)

        rng = np.random.default_rng(1)
        one = symbols[len(symbols) // 2]
        searches = [name[start:start + size].lower() for name in rng.choice(symbols, args.requests + 2)
                    for start, size in [(int(rng.integers(0, 3)), int(rng.integers(2, 4)))]]
        endpoints = {
            "health": lambda i: "/api/health",
            "anomalies": lambda i: "/api/anomalies",
            "anomalies_of_a_symbol": lambda i: f"/api/anomalies?symbol={one}",
            "candles": lambda i: f"/api/candles?symbol={one}",
            "symbols": lambda i: "/api/symbols",
            "symbols_search": lambda i: f"/api/symbols?q={searches[i]}",
        }
        port = free_port()
        log = open(scratch / "bench-dashboard.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "market_anomaly", "dashboard", "--db", url,
                                   "--port", str(port), "--no-kafka"], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    fetch_ms(base + "/api/symbols?limit=1")
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the dashboard did not start: see {log.name}")
                    time.sleep(0.2)
            timings = {}
            for name, path_of in endpoints.items():
                for i in range(2):  # untimed: the first reads pages into the cache
                    fetch_ms(base + path_of(i))
                times = [fetch_ms(base + path_of(i + 2)) for i in range(args.requests)]
                timings[name] = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                                 "max_ms": round(max(times), 1)}
        finally:
            server.terminate()
            server.wait(10)
            log.close()
        report["requests_per_endpoint"] = args.requests
        report["endpoints"] = timings
        report["target_met"] = all(t["p99_ms"] <= 200 for t in timings.values())
        if args.job_side:
            report.update(job_side(url))
        print(json.dumps(report))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if server_dir is not None:
            subprocess.run([str(Path(__file__).parents[1] / "scripts" / "postgres-test-server.sh"), "stop", server_dir],
                           capture_output=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MARKET_ANOMALY_LOG_LEVEL", "WARNING")
    sys.exit(main())
