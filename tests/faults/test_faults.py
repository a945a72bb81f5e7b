"""The fault suite (issue 13): real processes, one fault each, and the same contract after every one.

Each case runs the exchange simulator (a replayed 2025 market at 300x, injected anomalies), the
producer, and `detect` against a real broker, with a SQLite (or PostgreSQL) database and a real
webhook receiver, then injects its fault and checks with ``Pipeline.verify``: one row per candle
the exchange served, decisions equal to an uninterrupted offline run, every MEDIUM+ alert
delivered once, the job still running. Run with `make test-faults` (``FAULT_OUTAGE_SECONDS``,
default 120, is how long a database or receiver stays away).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import string
import time
import urllib.request

import pytest
from conftest import OUTAGE_SECONDS
from confluent_kafka import Producer

pytestmark = pytest.mark.integration
SQLITE_BUSY_SECONDS = 30  # the database sink's busy timeout
LISTING = "NEWLISTUSDT"  # a new pair listed after a flood of random symbols


def test_detect_killed_mid_backlog_restarts_from_its_checkpoint(pipeline):
    running = pipeline()
    running.wait_for_rows(600, timeout=300)  # the seeded history is 3,000 candles, 600 offsets a batch
    assert len(running.decisions()) < 3000, "the backlog was over before the kill"
    running["detect"].kill()
    running["detect"].start()
    print(running.verify())


def test_broker_killed_and_restarted_under_the_producer_and_the_job(pipeline, tmp_path):
    from market_anomaly.kafka import topics
    from market_anomaly.kafka.broker import LocalBroker

    broker = LocalBroker(tmp_path / "kafka", port=0)
    broker.start()
    try:
        topics.ensure_topics(broker.client_config(), topics.DEFAULT_TOPICS)
        running = pipeline(bootstrap=broker.bootstrap_servers)
        running.wait_for_rows(3000, timeout=300)
        os.kill(broker.pid(), signal.SIGKILL)
        time.sleep(15)  # the producer buffers and the job retries meanwhile
        broker.start()
        print(running.verify())
        assert running["produce"].running()
        running.stop()
    finally:
        broker.stop()


def test_sqlite_locked_longer_than_any_timeout(pipeline):
    running = pipeline()
    running.wait_for_rows(3000, timeout=300)
    lock = sqlite3.connect(running.db_url.split("///", 1)[1], isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every writer waits; the 30 s busy timeout runs out, again and again
    time.sleep(OUTAGE_SECONDS)
    assert running["detect"].running()
    lock.execute("COMMIT")
    lock.close()
    print(running.verify())
    if OUTAGE_SECONDS > SQLITE_BUSY_SECONDS:  # a shorter lock is only a slow write, not an outage
        assert "sink database: delivered after" in running["detect"].logs(tail=10**7)


def test_postgresql_stopped_longer_than_any_timeout(pipeline, stoppable_postgres):
    import psycopg

    name = f"faults_{int(time.time())}"
    with psycopg.connect(stoppable_postgres.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    running = pipeline(db_url=stoppable_postgres.url.rsplit("/", 1)[0] + "/" + name)
    running.wait_for_rows(3000, timeout=300)
    stoppable_postgres.stop()
    time.sleep(OUTAGE_SECONDS)
    assert running["detect"].running()
    stoppable_postgres.start()
    print(running.verify())


def test_websocket_drops_and_producer_killed(pipeline):
    running = pipeline(exchange_flags=("--drop-every", "150"))  # every connection cut after 150 messages
    running.wait_for_rows(3000, timeout=300)
    running["produce"].kill()
    time.sleep(5)  # 25 market minutes: the restarted producer's seeded history covers them
    running["produce"].start()
    time.sleep(20)
    print(running.verify())
    assert "reconnecting" in running["produce"].logs(tail=10**7)


def test_server_shutdown_notices_at_the_producer(pipeline):
    running = pipeline(exchange_flags=("--control",))
    running.wait_for_rows(3000, timeout=300)
    for _ in range(2):  # Binance's notice before a maintenance disconnect: the producer hands over, twice
        request = urllib.request.Request(running.rest_url + "/sim/shutdown?grace=2", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["ok"]
        time.sleep(10)
    print(running.verify())
    assert "announced a shutdown" in running["produce"].logs(tail=10**7)


def test_webhook_failing_then_back_delivers_every_alert_once_late(pipeline, receiver):
    receiver.status = 500
    running = pipeline()
    running.wait_for_rows(3000, timeout=300)
    half = OUTAGE_SECONDS / 2
    time.sleep(half)
    assert running["detect"].stop() == 0  # undelivered alerts stay in the state file over a restart
    running["detect"].start()
    time.sleep(half)
    refused = receiver.refused
    assert refused > 0, "no alert reached the failing receiver: did the market raise a MEDIUM+ anomaly?"
    assert receiver.accepted == []
    receiver.status = 200
    counts = running.verify()
    assert counts["alerts"] >= 1, f"the market raised no MEDIUM+ anomaly, so the outage held back nothing: {counts}"
    print(counts)


def test_poison_records_into_the_topic(pipeline, kafka_broker):
    from integration.test_stream_faults import poison
    from market_anomaly.candles.validation import utf8_prefix
    from market_anomaly.kafka.dead_letter import RAW_BYTES
    from support import consume_all

    running = pipeline(detect_flags=("--max-symbols", "200"))
    running.wait_for_rows(3000, timeout=300)
    template = running.candles().iloc[-1].to_dict()
    template = {key: (int(value) if key.endswith("_time") or key == "produced_at" else value)
                for key, value in template.items() if value == value}  # NaN columns out
    cases = poison(template)
    flood = [json.dumps({**template, "symbol": "".join(random.Random(n).choices(string.ascii_uppercase, k=10))
                         + "USDT"}).encode() for n in range(10_000)]
    producer = Producer({"bootstrap.servers": running.bootstrap, "message.max.bytes": 2_000_000})
    for raw in [raw for _, raw, _ in cases] + flood:
        while True:
            try:
                producer.produce(running.names["candles"], raw, key=b"AAAUSDT")
                break
            except BufferError:
                producer.poll(0.5)
    assert producer.flush(60) == 0

    time.sleep(20)
    # A real listing after the flood: every state bucket is full of one-off symbols, which give way to it.
    minute = 60_000
    for step in range(1, 4):
        producer.produce(running.names["candles"], key=LISTING.encode(), value=json.dumps(
            {**template, "symbol": LISTING, "open_time": template["open_time"] + step * minute,
             "close_time": template["close_time"] + step * minute}).encode())
    assert producer.flush(60) == 0
    print(running.verify())  # later candles of the same symbols decided, nothing lost
    running.wait_until(lambda: len(listing_rows(running)) == 3, 120, "the listing's 3 candles were not decided")
    letters = [json.loads(m.value()) for m in consume_all(kafka_broker.client_config(), running.names["dead"],
                                                          len(cases) + 9_000, 120)]
    by_raw: dict[str, list[str]] = {}
    for letter in letters:
        by_raw.setdefault(letter["raw"], []).append(letter["reason"])
    for case, raw, reason in cases:
        assert by_raw.get(utf8_prefix(raw.decode("utf-8", errors="replace"), RAW_BYTES)) == [reason], case
    refused = [letter for letter in letters if raw_symbol(letter).endswith("USDT") and len(raw_symbol(letter)) == 14]
    decided = flood_rows(running)
    assert len(decided) <= 200 and len(decided) + len(refused) == len(flood), (len(decided), len(refused))
    assert {letter["reason"] for letter in refused} == {refused[0]["reason"]} and "symbol" in refused[0]["reason"]

    assert running["detect"].stop() == 0  # and it restarts cleanly, past the poison
    running["detect"].start()
    time.sleep(20)
    print(running.verify())


def raw_symbol(letter: dict) -> str:
    try:
        return str(json.loads(letter["raw"]).get("symbol", ""))
    except (ValueError, AttributeError):
        return ""


def flood_rows(running) -> list:
    with sqlite3.connect(running.db_url.split("///", 1)[1], timeout=60) as connection:
        return connection.execute("SELECT symbol FROM decisions WHERE symbol NOT IN (?, ?, ?, ?)",
                                  (*running.symbols, LISTING)).fetchall()


def listing_rows(running) -> list:
    with sqlite3.connect(running.db_url.split("///", 1)[1], timeout=60) as connection:
        return connection.execute("SELECT open_time FROM decisions WHERE symbol = ?", (LISTING,)).fetchall()


def test_one_broker_of_three_killed(pipeline, kafka_cluster):
    running = pipeline(bootstrap=kafka_cluster.bootstrap_servers,
                       replication=(kafka_cluster.replication_factor, kafka_cluster.min_insync_replicas))
    running.wait_for_rows(3000, timeout=300)
    victim = kafka_cluster.brokers[1]
    victim.kill()
    try:
        time.sleep(30)
        print(running.verify())
    finally:
        victim.start()
