"""Helpers shared by the test files (importable as ``support``: pyproject puts tests/ on the path)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from market_anomaly.core.params import DEFAULTS
from market_anomaly.exchange.market import synthetic_candles

REPOSITORY = Path(__file__).resolve().parents[1]
PARAMS = REPOSITORY / "model_params.json"
MINUTE_MS = 60_000


def market(n: int = 3000, seed: int = 0, symbol: str = "TESTUSDT") -> pd.DataFrame:
    """``n`` one-minute candles of the simulator's synthetic market."""
    return synthetic_candles(n, seed, symbol)


def minute_market(symbols: list[str], minutes: int, spike_at: int | None = 330) -> pd.DataFrame:
    """``minutes`` synthetic candles of each symbol on the minute, as an exchange sends them; the first symbol
    has a 14-sigma price spike at row ``spike_at`` (past every detector's warm-up), so a comparison of
    decisions covers one that raises an anomaly (None: no spike)."""
    from market_anomaly.training.injection import inject

    frames = []
    for seed, symbol in enumerate(symbols):
        candles = market(minutes, seed, symbol)
        shift = candles["open_time"].iat[0] % MINUTE_MS
        candles = candles.assign(**{name: candles[name] - shift for name in ("open_time", "close_time", "produced_at")})
        if seed == 0 and spike_at is not None:
            candles, _ = inject(candles, "price_spike", spike_at, np.random.default_rng(0), magnitude=14.0)
        frames.append(candles)
    return pd.concat(frames, ignore_index=True)


def produce_candles(client_config: dict[str, str], topic: str, candles: pd.DataFrame,
                    extra: list[bytes] = ()) -> None:
    """``candles`` as the producer writes them: JSON keyed by symbol, minute by minute; then ``extra`` values."""
    from confluent_kafka import Producer

    producer = Producer({**client_config, "acks": "all", "linger.ms": 20})
    for record in candles.sort_values(["open_time", "symbol"]).to_dict("records"):
        producer.produce(topic, json.dumps(record).encode(), key=record["symbol"].encode())
        producer.poll(0)
    for value in extra:
        producer.produce(topic, value)
    assert producer.flush(60) == 0


def database_decisions(database: Path, expected: int, job: subprocess.Popen, timeout: float) -> pd.DataFrame:
    """The ``decisions`` table of a running job's SQLite ``database`` once it has ``expected`` rows (or the job
    ended, or ``timeout`` seconds passed)."""
    deadline = time.monotonic() + timeout
    decisions = pd.DataFrame()
    while time.monotonic() < deadline and job.poll() is None:
        if database.exists():
            with sqlite3.connect(database, timeout=30) as connection:
                try:
                    decisions = pd.read_sql_query("SELECT * FROM decisions", connection)
                except (pd.errors.DatabaseError, sqlite3.OperationalError):
                    pass  # the job has not created its schema yet
            if len(decisions) >= expected:
                break
        time.sleep(1)
    return decisions


def assert_decisions_equal_offline(streamed: pd.DataFrame, candles: pd.DataFrame) -> None:
    """A runner's stored decisions are offline ``score``'s on the same candles, one per candle."""
    from market_anomaly.core import load_params
    from market_anomaly.training.scoring import score_candles

    offline = score_candles(candles, load_params(PARAMS)).set_index(["symbol", "open_time"]).sort_index()
    streamed = streamed.set_index(["symbol", "open_time"]).sort_index()
    assert list(streamed.index) == list(offline.index)
    # Something to compare: warmed-up z-scores, and the injected spike raised an anomaly.
    assert offline["zscore"].notna().sum() > 1000 and offline["is_anomaly"].any()
    assert (streamed["votes"].to_numpy() == offline["votes"].to_numpy()).all()
    assert (streamed["is_anomaly"].astype(bool).to_numpy() == offline["is_anomaly"].to_numpy()).all()
    assert (streamed["confidence"].to_numpy() == offline["confidence"].to_numpy()).all()
    assert streamed["zscore"].fillna(0).to_numpy() == pytest.approx(offline["zscore"].fillna(0).to_numpy(), abs=1e-9)
    # The market-wide marks too: a minute split over batches or members is judged on all of it.
    assert (streamed["market_event"].fillna(False).astype(bool).to_numpy() == offline["market_event"].to_numpy()).all()
    assert (streamed["reasons"].fillna("").to_numpy() == offline["reasons"].to_numpy()).all()


def small_document() -> dict:
    """Defaults with short windows so synthetic series of a few thousand candles warm up."""
    document = json.loads(json.dumps(DEFAULTS))
    document["volatility"].update(history=48, warmup=300)
    document["consensus"].update(false_alarm_budget=2.0)  # a 3-day training set allows few episodes: not none
    return document


def consume_all(client_config: dict[str, str], topic: str, expected: int, timeout: float = 30.0) -> list:
    """Every record of ``topic`` from offset 0 (assigned, no consumer group to wait for), waiting for ``expected``
    (then a second more, so extras show)."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**client_config, "group.id": f"check-{topic}", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [message for message in consumer.consume(1000, timeout=0.5) if message.error() is None]
        messages += [message for message in consumer.consume(1000, timeout=1.0) if message.error() is None]
    finally:
        consumer.close()
    return messages


def stop_process(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 120.0,
                 force: Callable[[], None] | None = None) -> None:
    """Ask ``process`` to stop (``signum``: what `up` or systemd would send) and wait; past ``timeout``,
    ``force()`` (default: SIGKILL the process itself) so a hung job cannot outlive its test."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        (force or process.kill)()
        process.wait(30)


# A valid candle record and invalid ones with their reasons: both parsers (the JVM's, the decider's) give these.
NOW_MS = 1_700_000_100_000  # the present the checks are against (a record's time in Kafka)
GOOD = {"symbol": "btcusdt", "interval": "1m", "open_time": 1_700_000_040_000, "close_time": 1_700_000_099_999,
        "open": 100.0, "high": 101.0, "low": 99.5, "close": 100.5, "volume": 12.5, "quote_volume": 1256.0,
        "trades": 40, "taker_buy_base": 6.0, "taker_buy_quote": 603.0, "event_time": 1_700_000_100_005,
        "source": "ws", "produced_at": 1_700_000_100_010}


def variant(**changes) -> str:
    return json.dumps({**GOOD, **changes})


INVALID = [
    ("not json at all", "not a JSON object"),
    ("[1, 2, 3]", "not a JSON object"),
    ('[{"symbol": "BTCUSDT"}]', "not a JSON object"),
    ('"BTCUSDT"', "not a JSON object"),
    ("123", "not a JSON object"),
    ("{broken", "not a candle JSON object"),
    (variant(close="100.5x"), "missing close"),
    (json.dumps({k: v for k, v in GOOD.items() if k not in ("volume", "open_time")}), "missing open_time"),
    (variant(symbol=" "), "missing symbol"),
    (variant(symbol="BTC-USDT"), "symbol is not 1-20 letters or digits"),
    (variant(symbol="B" * 21), "symbol longer than 20 characters"),
    (variant(interval="5m"), "interval is not 1m"),
    (variant(low=0.0), "low price outside [1e-12, 1e+12]"),
    (variant(open=-100.0), "open price outside [1e-12, 1e+12]"),
    (variant(high=1e308), "high price outside [1e-12, 1e+12]"),
    (variant(low=1e-300), "low price outside [1e-12, 1e+12]"),
    (variant(volume=1e300), "volume outside [0, 1e+18]"),
    (variant(high=100.0), "high below open, close or low"),
    (variant(low=100.2), "low above open or close"),
    (variant(volume=-1.0), "volume outside [0, 1e+18]"),
    (variant(trades=-1), "trades outside [0, 1e+18]"),
    (variant(close_time=GOOD["open_time"]), "close_time not after open_time"),
    (variant(open_time=GOOD["open_time"] + 1), "open_time not aligned to 1m"),
    (variant(open_time=4_102_444_800_000, close_time=4_102_444_859_999), "open_time more than 1m after the present"),
    (variant(open_time=0, close_time=59_999), "open_time before 2009"),
    (variant(open_time=-60_000, close_time=-1), "open_time before 2009"),
    (variant(tick_size=0), "tick_size outside [1e-12, 1e+12]"),
] + [(variant().replace(f'"{field}": {GOOD[field]}', f'"{field}": {number}'), f"{field} is not finite")
     for number, field in (("NaN", "close"), ("Infinity", "high"), ("-Infinity", "low"), ("1e309", "open"),
                           ("-1e309", "volume"))]
