"""Fixtures for the sink and dashboard tests: a real PostgreSQL server, Debian's Chromium, decision frames.

PostgreSQL and Chromium are installed by the project's scripts when absent (CI starts
from a fresh machine); when an install fails the test fails with the script's output,
it is never skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from support import REPOSITORY

SCRIPTS = REPOSITORY / "scripts"
MINUTE_MS = 60_000
START_MS = 1_769_285_820_000  # 2026-01-24 20:17 UTC


def run_script(*argv: str, timeout: float) -> str:
    """Run one of scripts/ and return its stdout; fail the test with its output when it fails."""
    result = subprocess.run([str(SCRIPTS / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{argv[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of a throwaway PostgreSQL server (installed from Debian's packages if absent) for the session."""
    # mkdtemp under /tmp, not pytest's tmp_path: as root the server runs as 'postgres', which must reach it.
    directory = tempfile.mkdtemp(prefix="market-anomaly-pg-")
    url = run_script("postgres-test-server.sh", "start", directory, timeout=900)
    try:
        yield url
    finally:
        subprocess.run([str(SCRIPTS / "postgres-test-server.sh"), "stop", directory], capture_output=True, timeout=60)


_database_names = itertools.count()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new, empty PostgreSQL database for one test."""
    import psycopg

    name = f"test_{int(time.time())}_{next(_database_names)}"
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The same test against SQLite (a new file) and a real PostgreSQL server (a new database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'anomalies.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium, installed by scripts/install-chromium.sh when missing."""
    return run_script("install-chromium.sh", timeout=900)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """artifacts/ at the repository root (git-ignored): screenshots and other evidence a test leaves."""
    directory = REPOSITORY / "artifacts"
    directory.mkdir(exist_ok=True)
    return directory


def decision(symbol: str, minute: int, close: float, anomaly: bool = False, confidence: str | None = None,
             reasons: str = "", **overrides) -> dict[str, object]:
    """One decision record as the Spark job hands it to the sinks (open/high/low included)."""
    open_time = START_MS + minute * MINUTE_MS
    record = {
        "symbol": symbol, "interval": "1m", "open_time": open_time, "close_time": open_time + MINUTE_MS - 1,
        "open": close * 0.999, "high": close * 1.002, "low": close * 0.997, "close": close,
        "return_pct": 0.1, "log_return": 0.001, "range_pct": 0.5, "volume": 12.5, "volume_ratio": 1.1,
        "zscore": 0.4, "votes": 3 if anomaly else 0, "is_anomaly": anomaly,
        "confidence": confidence or ("HIGH" if anomaly else "NONE"), "reasons": reasons,
        "produced_at": open_time + MINUTE_MS + 20, "decided_at": int(time.time() * 1000),
    }
    record.update(overrides)
    return record


@pytest.fixture
def make_decision():
    """``make_decision(symbol, minute, close, anomaly=False, confidence=None, reasons="", **columns)``."""
    return decision


def market_decisions() -> pd.DataFrame:
    """Two symbols, 30 minutes; BTCUSDT has two anomalies, ETHUSDT one; the first return is NaN (warm-up)."""
    records = []
    for minute in range(30):
        btc_anomaly = minute in (12, 25)
        records.append(decision(
            "BTCUSDT", minute, 90_000 + 10 * minute + (900 if btc_anomaly else 0), btc_anomaly,
            reasons="Z-SCORE 7.2σ | VOLUME 14x" if minute == 12 else "VOLATILITY 4.1σ" if minute == 25 else "",
            confidence="HIGH" if minute == 12 else "MEDIUM" if minute == 25 else None,
            return_pct=float("nan") if minute == 0 else 0.1, window_mean=1.25,
        ))
        records.append(decision("ETHUSDT", minute, 3_000 + minute, minute == 20,
                                confidence="LOW" if minute == 20 else None,
                                reasons="VOLUME 6x" if minute == 20 else ""))
    return pd.DataFrame(records)


@pytest.fixture
def market_frame() -> pd.DataFrame:
    return market_decisions()


DASHBOARD_COMMAND = (sys.executable, "-m", "market_anomaly", "dashboard")
DASHBOARD_CANDLES_TOPIC = "dashboard-candles"


@pytest.fixture
def dashboard_command() -> tuple[str, ...]:
    return DASHBOARD_COMMAND


@pytest.fixture(scope="session")
def dashboard_url(tmp_path_factory, kafka_broker):
    """`market-anomaly dashboard` on a free port, over a SQLite database holding ``market_decisions()``
    and a progress record 3 messages behind each partition of its candle topic (which gets 12)."""
    from confluent_kafka import Producer

    from market_anomaly.kafka.topics import ensure_topics, topic_offsets
    from market_anomaly.sinks.database import DatabaseSink, open_database

    candles_topic = DASHBOARD_CANDLES_TOPIC  # its own, so no other test reads these records
    ensure_topics(kafka_broker.client_config(), {candles_topic: 4})
    producer = Producer(kafka_broker.client_config())
    for index in range(12):
        producer.produce(candles_topic, b"{}", partition=index % 4)
    assert producer.flush(10) == 0
    ends = topic_offsets(kafka_broker.client_config(), candles_topic)
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'anomalies.db'}"
    sink = DatabaseSink(open_database(url))
    sink.write(market_decisions())
    sink.record_health({
        "batch_id": 42, "input_rows": 60, "processed_rows_per_second": 250.0, "batch_duration_ms": 240,
        "partitions": {f"{candles_topic}:{p}": {"end_offset": high - 3} for p, (_, high) in ends.items()},
        "at": int(time.time() * 1000),
    })
    sink.close()

    with running_dashboard(url, tmp_path_factory.mktemp("dashboard-log"), "--topic", candles_topic,
                           "--bootstrap-servers", kafka_broker.bootstrap_servers) as base:
        yield base


@contextlib.contextmanager
def running_dashboard(db_url: str, log_dir: Path, *flags: str):
    """`market-anomaly dashboard` over ``db_url`` on a free port, until the block ends; yields its base URL."""
    from market_anomaly.kafka.broker import free_port

    port = free_port()
    log_path = log_dir / "dashboard.log"
    with open(log_path, "wb") as log:  # a file, not a pipe nobody reads: a full pipe would block the server
        process = subprocess.Popen([*DASHBOARD_COMMAND, "--port", str(port), "--db", db_url, *flags],
                                   stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/api/symbols", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"the dashboard did not start:\n{log_path.read_text()}", pytrace=False)
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def live_dashboard(tmp_path):
    """A dashboard (without Kafka) over its own SQLite database holding ``market_decisions()``: yields
    ``(base URL, database URL)`` for tests that write more decisions while a page watches."""
    from market_anomaly.sinks.database import DatabaseSink, open_database

    url = f"sqlite:///{tmp_path / 'anomalies.db'}"
    sink = DatabaseSink(open_database(url))
    sink.write(market_decisions())
    sink.record_health({"batch_id": 1, "input_rows": 60, "at": int(time.time() * 1000)})
    sink.close()
    with running_dashboard(url, tmp_path, "--no-kafka") as base:
        yield base, url
