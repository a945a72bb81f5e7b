"""Decisions as JSON on a Kafka topic (default ``crypto-anomalies``), keyed by symbol.

Idempotent producer with ``acks=all``; each micro-batch is flushed before the next one,
so what a batch produced is on the broker when Spark commits its offsets. NaN -> null.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
from confluent_kafka import KafkaError

from market_anomaly.kafka.producing import produce_waiting, reliable_producer
from market_anomaly.sinks.common import is_anomaly, to_records

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    pass


class KafkaTopicSink:
    name = "kafka"

    def __init__(self, client_config: dict[str, str], topic: str, anomalies_only: bool = False,
                 flush_timeout: float = 30.0):
        self.topic = topic
        self.anomalies_only = anomalies_only
        self.flush_timeout = flush_timeout
        self.produced = 0
        self._failures: list[str] = []
        self._producer = reliable_producer(client_config)

    def _on_delivery(self, error: KafkaError | None, message) -> None:
        if error is not None:
            self._failures.append(str(error))

    def write(self, decisions: pd.DataFrame) -> None:
        records = to_records(decisions)
        if self.anomalies_only:
            records = [record for record in records if is_anomaly(record)]
        for record in records:
            produce_waiting(self._producer, self.topic, json.dumps(record, allow_nan=False, default=str).encode(),
                            key=str(record.get("symbol")).encode(), on_delivery=self._on_delivery)
        self.flush()
        self.produced += len(records)

    def flush(self) -> None:
        undelivered = self._producer.flush(self.flush_timeout)
        failures, self._failures = self._failures, []
        if undelivered or failures:
            raise DeliveryFailed(
                f"{undelivered} decision(s) undelivered after {self.flush_timeout:.0f}s, {len(failures)} failed"
                + (f" (first error: {failures[0]})" if failures else "")
            )

    def close(self) -> None:
        self.flush()
