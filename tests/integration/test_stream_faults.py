"""The running `detect` job under hostile input and a failing durable sink (real broker, Spark, SQLite).

Poison records straight into the candle topic each end in the dead-letter topic with their reason,
the job keeps running (and restarts cleanly), and later candles of the same symbols are decided; a
SQLite file locked for longer than its busy timeout loses no decision and duplicates none.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from support import REPOSITORY, consume_all, market

from market_anomaly.candles.validation import utf8_prefix
from market_anomaly.kafka import topics
from market_anomaly.kafka.dead_letter import RAW_BYTES
from market_anomaly.sinks.database import open_database

pytestmark = pytest.mark.integration

POISONED = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
LOCKED = [f"L{index:02d}USDT" for index in range(20)]
MINUTE_MS = 60_000
LOCK_SECONDS = 100  # the case; the job's busy timeout is 30 s


class Job:
    """`market-anomaly detect` as a process, restartable on the same checkpoint."""

    def __init__(self, home: Path, bootstrap: str, names: dict[str, str]):
        self.home, self.bootstrap, self.names = home, bootstrap, names
        self.database = home / "anomalies.db"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        command = [sys.executable, "-m", "market_anomaly", "--log-level", "INFO", "detect",
                   "--bootstrap-servers", self.bootstrap, "--topic", self.names["candles"],
                   "--dead-letter-topic", self.names["dead"], "--anomalies-topic", self.names["decisions"],
                   "--db", f"sqlite:///{self.database}", "--checkpoint-dir", str(self.home / "checkpoint"),
                   "--console", "off", "--params", str(REPOSITORY / "model_params.json"),
                   "--symbols", ",".join(POISONED + LOCKED), "--max-offsets-per-trigger", "2000"]
        self.log = self.home / f"detect-{self.starts}.log"
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
                                        cwd=self.home, env={**os.environ, "MARKET_ANOMALY_HOME": str(self.home)})

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.process.kill()  # never left behind
            raise

    def running(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.home.glob("detect-*.log")))

    def decided(self, symbols: list[str]) -> list[tuple[str, int]]:
        with sqlite3.connect(self.database, timeout=60) as connection:
            marks = ", ".join("?" for _ in symbols)
            return connection.execute(f"SELECT symbol, open_time FROM decisions WHERE symbol IN ({marks})",
                                      symbols).fetchall()

    def wait_for(self, symbols: list[str], count: int, timeout: float) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            rows = self.decided(symbols)
            if len(rows) >= count:
                return rows
            time.sleep(1.0)
        pytest.fail(f"{len(self.decided(symbols))} of {count} decisions (job running: {self.running()}):\n"
                    + self.logs()[-3000:])


@pytest.fixture(scope="module")
def job(kafka_broker, tmp_path_factory):
    home = tmp_path_factory.mktemp("stream-faults")
    names = {"candles": "faults-candles", "dead": "faults-dead-letters", "decisions": "faults-decisions"}
    topics.ensure_topics(kafka_broker.client_config(), {names["candles"]: 4, names["dead"]: 1, names["decisions"]: 4})
    open_database(f"sqlite:///{home / 'anomalies.db'}").close()  # migrated before the job (and the lock) opens it
    running = Job(home, kafka_broker.bootstrap_servers, names)
    running.start()
    yield running
    if running.running():
        running.stop()


def candle_messages(symbol: str, minutes: range, seed: int) -> list[tuple[bytes, bytes]]:
    candles = market(max(minutes) + 1, seed, symbol).iloc[list(minutes)]
    shift = candles["open_time"].iat[0] % MINUTE_MS  # the synthetic market's first minute is not on the minute
    candles = candles.assign(**{name: candles[name] - shift for name in ("open_time", "close_time", "produced_at")})
    return [(symbol.encode(), json.dumps(record).encode()) for record in candles.to_dict("records")]


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 2_000_000})
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.5)
    assert producer.flush(60) == 0


def poison(template: dict) -> list[tuple[str, bytes, str]]:
    """(case, raw value, the reason the dead letter must give)."""
    def variant(**changes) -> bytes:
        return json.dumps({**template, **changes}).encode()

    text = json.dumps(template)
    return [
        ("oversized value", b'{"symbol": "AAAUSDT", "pad": "' + b"x" * 900_000 + b'"}', "value larger than 4096 bytes"),
        ("invalid UTF-8", variant(symbol="AAAUSDT").replace(b"AAAUSDT", b"AAA\xff\xfeUSDT"), "value is not valid UTF-8"),
        ("70,000-character symbol", variant(symbol="S" * 70_000), "value larger than 4096 bytes"),
        ("300-character symbol", variant(symbol="S" * 300), "symbol longer than 20 characters"),
        ("future open_time", variant(open_time=4_102_444_800_000, close_time=4_102_444_859_999),
         "open_time more than 1m after the present"),
        ("far-past open_time", variant(open_time=0, close_time=59_999), "open_time before 2009"),
        ("misaligned open_time", variant(open_time=template["open_time"] + 7), "open_time not aligned to 1m"),
        ("1e308 price", variant(high=1e308), "high price outside [1e-12, 1e+12]"),
        ("Infinity", text.replace(f'"high": {template["high"]}', '"high": Infinity').encode(), "high is not finite"),
        ("1e309", text.replace(f'"close": {template["close"]}', '"close": 1e309').encode(), "close is not finite"),
        ("negative price", variant(low=-1.0), "low price outside [1e-12, 1e+12]"),
        ("1e-300 price", variant(low=1e-300), "low price outside [1e-12, 1e+12]"),
        ("non-object JSON", b"[1, 2, 3]", "not a JSON object"),
        ("JSON string", b'"AAAUSDT"', "not a JSON object"),
    ]


def test_poison_records_end_in_the_dead_letter_topic_and_the_symbols_go_on(job, kafka_broker):
    config = kafka_broker.client_config()
    first = [m for seed, symbol in enumerate(POISONED) for m in candle_messages(symbol, range(0, 100), seed)]
    produce(job.bootstrap, job.names["candles"], first)
    job.wait_for(POISONED, 300, timeout=300)

    template = json.loads(candle_messages("AAAUSDT", range(100, 101), 0)[0][1])
    cases = poison(template)
    flood = [json.dumps({**template, "symbol": "".join(random.Random(n).choices(string.ascii_uppercase, k=10))})
             .encode() for n in range(10_000)]
    produce(job.bootstrap, job.names["candles"], [(b"AAAUSDT", raw) for _, raw, _ in cases]
            + [(None, raw) for raw in flood])
    later = [m for seed, symbol in enumerate(POISONED) for m in candle_messages(symbol, range(100, 200), seed)]
    produce(job.bootstrap, job.names["candles"], later)

    rows = job.wait_for(POISONED, 600, timeout=300)
    assert sorted(rows) == sorted({(symbol, int(json.loads(value)["open_time"])) for key, value in first + later
                                   for symbol in [key.decode()]})  # every later candle decided, once
    letters = [json.loads(m.value()) for m in consume_all(config, job.names["dead"], len(cases) + len(flood), 120)]
    assert all(letter["stage"] == "consumer" and len(m) < 100_000 for letter, m in zip(
        letters, (json.dumps(letter) for letter in letters)))
    by_raw = {}
    for letter in letters:
        by_raw.setdefault(letter["raw"], []).append(letter["reason"])
    for case, raw, reason in cases:  # each exactly once, its raw value cut to RAW_BYTES of valid UTF-8
        assert by_raw.get(utf8_prefix(raw.decode("utf-8", errors="replace"), RAW_BYTES)) == [reason], case
    assert sum(letter["reason"] == "symbol not in the configured list" for letter in letters) == len(flood)
    assert job.running()

    assert job.stop() == 0  # and it restarts cleanly, past the poison, from its checkpoint
    job.start()
    more = [m for seed, symbol in enumerate(POISONED) for m in candle_messages(symbol, range(200, 210), seed)]
    produce(job.bootstrap, job.names["candles"], more)
    assert len(job.wait_for(POISONED, 630, timeout=300)) == 630
    assert len(consume_all(config, job.names["dead"], len(letters) + 1, 5)) == len(letters)  # none replayed


def test_a_database_locked_longer_than_its_timeout_loses_and_duplicates_nothing(job):
    first = [m for seed, symbol in enumerate(LOCKED) for m in candle_messages(symbol, range(0, 150), seed + 10)]
    produce(job.bootstrap, job.names["candles"], first)
    job.wait_for(LOCKED, 3000, timeout=300)

    lock = sqlite3.connect(job.database, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every writer waits; its 30 s busy timeout runs out
    locked_at = time.monotonic()
    rest = [m for seed, symbol in enumerate(LOCKED) for m in candle_messages(symbol, range(150, 300), seed + 10)]
    produce(job.bootstrap, job.names["candles"], rest)
    while time.monotonic() - locked_at < LOCK_SECONDS:
        time.sleep(1)
        assert job.running()
    lock.execute("COMMIT")
    lock.close()

    rows = job.wait_for(LOCKED, 6000, timeout=300)
    assert len(rows) == len(set(rows)) == 6000
    logs = job.logs()
    shown = "\n".join(line for line in logs.splitlines() if "market_anomaly" in line)[-4000:]
    assert "sink database: delivering" in logs and "database is locked" in logs, shown
    assert "sink database: delivered after" in logs, shown
    assert job.running()


def test_a_job_killed_with_a_committed_batch_not_yet_in_the_database_delivers_it_from_the_spool(job):
    """Spark commits a batch once it is spooled, before the sinks have it (``spark.handover``): killed then, the job
    delivers it from the spool at its next start, and replays the batch after it, so the database ends whole."""
    spool = job.home / "checkpoint" / "market-anomaly" / "spool"
    commits = job.home / "checkpoint" / "commits"
    job.wait_for(LOCKED, 6000, timeout=300)
    lock = sqlite3.connect(job.database, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        later = [m for seed, symbol in enumerate(LOCKED) for m in candle_messages(symbol, range(300, 450), seed + 10)]
        produce(job.bootstrap, job.names["candles"], later)  # two batches at the job's 2,000 a batch
        deadline = time.monotonic() + 180
        spooled = []
        while time.monotonic() < deadline and not spooled:
            spooled = [path.name for path in spool.glob("*.given.arrow")
                       if (commits / str(int(path.name.split(".")[0]))).exists()]
            time.sleep(0.5)
        assert spooled, job.logs()[-3000:]
        job.process.kill()  # kill -9: the spooled batch is committed, the database does not have it
        job.process.wait(timeout=30)
    finally:
        lock.execute("COMMIT")
        lock.close()
    assert len(job.decided(LOCKED)) < 9000
    job.start()
    rows = job.wait_for(LOCKED, 9000, timeout=300)
    assert len(rows) == len(set(rows)) == 9000
    assert "delivering 1 batch(es) a former run committed before its sinks had them" in job.log.read_text()
    assert not list(spool.glob("*"))
