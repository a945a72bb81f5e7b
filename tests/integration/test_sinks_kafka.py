"""The Kafka topic sink against the real broker: JSON values keyed by symbol, NaN as null, anomalies only."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition

from market_anomaly.sinks.kafka_topic import DeliveryFailed, KafkaTopicSink

pytestmark = pytest.mark.integration


def consume_all(client_config: dict[str, str], topic: str, expected: int, timeout: float = 30.0) -> list:
    """Every record of ``topic`` from offset 0 (assigned, no consumer group to wait for), waiting for ``expected``."""
    consumer = Consumer({**client_config, "group.id": f"check-{topic}", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [message for message in consumer.consume(100, timeout=0.5) if message.error() is None]
        messages += [message for message in consumer.consume(100, timeout=1.0) if message.error() is None]  # extras?
    finally:
        consumer.close()
    return messages


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


def test_unreachable_broker_raises_after_the_flush_timeout(make_decision):
    """The sink reports a failed batch (Sinks logs and counts it); it never hangs the stream."""
    sink = KafkaTopicSink({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": "1000"}, "anything",
                          flush_timeout=3)
    with pytest.raises(DeliveryFailed, match="1 failed"):
        sink.write(pd.DataFrame([make_decision("BTCUSDT", 0, 1.0)]))
