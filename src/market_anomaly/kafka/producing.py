"""Producing without losing a message when the client's local queue is full."""

from __future__ import annotations

from confluent_kafka import Producer


def produce_waiting(producer: Producer, topic: str, value: bytes, key: str | bytes | None = None,
                    on_delivery=None) -> None:
    """``producer.produce``, but a full local queue (broker slow or down) waits for deliveries instead of raising."""
    while True:
        try:
            producer.produce(topic, value, key=key, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.5)
    producer.poll(0)  # serve delivery callbacks
