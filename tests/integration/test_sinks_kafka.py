"""The Kafka topic sink against the real broker: JSON values keyed by symbol, NaN as null, anomalies only."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
from support import consume_all

from market_anomaly.sinks.kafka_topic import DeliveryFailed, KafkaTopicSink

pytestmark = pytest.mark.integration


def test_every_decision_as_json_keyed_by_symbol(kafka_broker, fresh_topic, market_frame):
    sink = KafkaTopicSink(kafka_broker.client_config(), fresh_topic)
    sink.write(market_frame)
    sink.close()
    messages = consume_all(kafka_broker.client_config(), fresh_topic, len(market_frame))
    assert len(messages) == len(market_frame) == sink.produced
    values = [json.loads(message.value()) for message in messages]
    assert all(message.key().decode() == value["symbol"] for message, value in zip(messages, values))
    by_key = {(value["symbol"], value["open_time"]): value for value in values}
    first_btc = by_key[("BTCUSDT", int(market_frame["open_time"].min()))]
    assert first_btc["return_pct"] is None  # NaN during warm-up -> null
    anomaly = by_key[("BTCUSDT", int(market_frame["open_time"].min()) + 12 * 60_000)]
    assert anomaly["is_anomaly"] is True and anomaly["confidence"] == "HIGH"
    assert anomaly["reasons"] == "Z-SCORE 7.2σ | VOLUME 14x" and anomaly["close"] == 90_000 + 120 + 900
    assert anomaly["window_mean"] == 1.25  # extra columns travel too
    # Keyed by symbol: all of a symbol's decisions are in one partition, in order.
    partitions = {message.key(): set() for message in messages}
    for message in messages:
        partitions[message.key()].add(message.partition())
    assert all(len(found) == 1 for found in partitions.values())


def test_anomalies_only(kafka_broker, fresh_topic, market_frame):
    sink = KafkaTopicSink(kafka_broker.client_config(), fresh_topic, anomalies_only=True)
    sink.write(market_frame)
    sink.write(market_frame.iloc[:0])  # an empty micro-batch is fine
    sink.close()
    values = [json.loads(m.value()) for m in consume_all(kafka_broker.client_config(), fresh_topic, 3)]
    assert sorted((v["symbol"], v["confidence"]) for v in values) == [
        ("BTCUSDT", "HIGH"), ("BTCUSDT", "MEDIUM"), ("ETHUSDT", "LOW")]


def test_unreachable_broker_fails_the_flush_and_keeps_the_decision(make_decision):
    """The sink reports an undelivered batch and keeps it for the next flush; it never hangs the stream."""
    sink = KafkaTopicSink({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": "1000"}, "anything",
                          flush_timeout=3)
    sink.write(pd.DataFrame([make_decision("BTCUSDT", 0, 1.0)]))
    with pytest.raises(DeliveryFailed, match="1 not taken by the broker"):
        sink.flush()
    with pytest.raises(DeliveryFailed, match="1 not taken by the broker"):
        sink.flush()  # sent again, still no broker


@pytest.mark.parametrize("message_timeout_ms", [3_000, 300_000])
def test_a_broker_away_longer_than_the_flush_timeout_loses_and_duplicates_nothing(
        tmp_path, make_decision, message_timeout_ms):
    """6,000 decisions while the broker is down: the batch waits (health shows the outage), then all arrive once.

    With a short delivery timeout the broker's refusals are sent again; with the default one the sends stay in
    flight across the failed flushes and are not sent twice.
    """
    from market_anomaly.kafka import topics
    from market_anomaly.kafka.broker import LocalBroker
    from market_anomaly.sinks import RetryPolicy, Sinks
    from market_anomaly.sinks.database import DatabaseSink, open_database

    broker = LocalBroker(tmp_path / "kafka", port=0)
    broker.start()
    try:
        topics.ensure_topics(broker.client_config(), {"decisions": 4})
        sink = KafkaTopicSink({**broker.client_config(), "message.timeout.ms": str(message_timeout_ms)},
                              "decisions", flush_timeout=2)
        health = DatabaseSink(open_database(f"sqlite:///{tmp_path / 'health.db'}"))
        sinks = Sinks([sink], health=health, retry=RetryPolicy(first=0.5, longest=1.0))
        frame = pd.DataFrame([make_decision(f"S{symbol:02d}USDT", minute, 100.0 + minute)
                              for symbol in range(20) for minute in range(300)])
        assert broker.stop() is True
        writer = threading.Thread(target=sinks.write, args=(frame,))
        writer.start()
        deadline = time.monotonic() + 60
        while not health.database.health()["progress"] and time.monotonic() < deadline:
            time.sleep(0.5)
        outage = health.database.health()["progress"]["sinks"]["kafka"]
        assert outage["attempts"] >= 1 and "still in flight after 2s" in outage["error"]
        time.sleep(2 * sink.flush_timeout + min(message_timeout_ms, 5_000) / 1000)  # past a flush (and a refusal)
        assert writer.is_alive()  # the batch waits for its durable sink
        broker.start()
        writer.join(timeout=120)
        assert not writer.is_alive() and sinks.outages == {}
        assert health.database.health()["progress"]["sinks"] == {}  # the outage is over in the health record
        messages = consume_all(broker.client_config(), "decisions", len(frame), timeout=60)
        keys = [(value["symbol"], value["open_time"]) for value in (json.loads(m.value()) for m in messages)]
        assert len(keys) == len(set(keys)) == len(frame)
        assert sinks.failures["kafka"] >= 1
        sinks.close()
    finally:
        broker.stop()
