"""The dead-letter topic: every input the pipeline cannot use goes here with its reason, never silently away.

A record is ``{"reason", "raw", "stage", "at"}``; ``raw`` is the input cut to ``RAW_BYTES`` of
UTF-8 (invalid bytes replaced), the reason to ``REASON_CHARS``, so a dead letter always fits the
broker's message limit (1 MB by default) whatever came in. Publishing is best-effort: a dead
letter that cannot be sent (broker away past the delivery timeout, a refused message) is
counted in ``failed`` and logged, and never stops the caller.
"""

from __future__ import annotations

import json
import logging
import time

from confluent_kafka import KafkaError, KafkaException

from market_anomaly import config, metrics
from market_anomaly.candles.validation import RAW_BYTES, utf8_prefix
from market_anomaly.kafka.producing import produce_waiting, reliable_producer

log = logging.getLogger(__name__)

REASON_CHARS = 500


def dead_letter(raw: str | bytes | None, reason: str, stage: str, at: int | None = None) -> bytes:
    """The dead-letter record's value."""
    record = {"reason": reason[:REASON_CHARS], "raw": utf8_prefix(raw, RAW_BYTES), "stage": stage,
              "at": int(time.time() * 1000) if at is None else at}
    return json.dumps(record, ensure_ascii=False).encode()


class DeadLetterPublisher:
    """Publishes dead letters; counts what it sent and what could not be."""

    def __init__(self, client_config: dict[str, str], topic: str = config.DEAD_LETTER_TOPIC, stage: str = "producer"):
        self.topic = topic
        self.stage = stage
        self.sent = 0
        self.failed = 0
        self._producer = reliable_producer(client_config)

    def _on_delivery(self, error: KafkaError | None, message) -> None:
        if error is not None:
            self._lost(error)

    def _lost(self, error: object) -> None:
        self.failed += 1
        log.error("dead letter to %s lost: %s (%d lost so far)", self.topic, error, self.failed)

    def publish(self, raw: str | bytes | None, reason: str, key: str | None = None) -> None:
        try:
            produce_waiting(self._producer, self.topic, dead_letter(raw, reason, self.stage),
                            key=utf8_prefix(key, 64) if key else None, on_delivery=self._on_delivery)
        except (KafkaException, ValueError, TypeError) as error:  # e.g. a topic that cannot exist
            self._lost(error)
            return
        self.sent += 1
        metrics.dead_lettered(self.stage, reason)
        log.warning("dead-lettered (%s): %s", self.stage, reason[:REASON_CHARS])

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for delivery; returns how many records are still undelivered (logged, not raised)."""
        remaining = self._producer.flush(timeout)
        if remaining:
            log.error("%d dead letter(s) to %s still undelivered after %.0fs", remaining, self.topic, timeout)
        return remaining
