"""The project's Kafka producers: idempotent with ``acks=all``, and never losing a message to a full local queue."""

from __future__ import annotations

from confluent_kafka import Producer

RELIABLE = {"enable.idempotence": True, "acks": "all"}  # a retried send is never written twice


def reliable_producer(client_config: dict[str, str], **defaults) -> Producer:
    return Producer(producer_config(client_config, **defaults))


def producer_config(client_config: dict[str, str], **defaults) -> dict:
    """``RELIABLE`` and ``defaults`` (dots as underscores: ``linger_ms=5``) under the user's ``client_config``
    (``-X`` settings): what the user passes wins, as in every Kafka client.

    >>> producer_config({"bootstrap.servers": "b:9092", "acks": "1"}, linger_ms=5)
    {'enable.idempotence': True, 'acks': '1', 'linger.ms': 5, 'bootstrap.servers': 'b:9092'}
    """
    return {**RELIABLE, **{key.replace("_", "."): value for key, value in defaults.items()}, **client_config}


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
