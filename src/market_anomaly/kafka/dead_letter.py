"""The dead-letter topic: every input the pipeline cannot use goes here with its reason, never silently away."""

from __future__ import annotations

import json
import logging
import time

from market_anomaly import config, metrics
from market_anomaly.kafka.producing import produce_waiting, reliable_producer

log = logging.getLogger(__name__)


class DeadLetterPublisher:
    """Publishes ``{"reason", "raw", "stage", "at"}`` records; counts what it sent."""

    def __init__(self, client_config: dict[str, str], topic: str = config.DEAD_LETTER_TOPIC, stage: str = "producer"):
        self.topic = topic
        self.stage = stage
        self.sent = 0
        self._producer = reliable_producer(client_config)

    def publish(self, raw: str | bytes | None, reason: str, key: str | None = None) -> None:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        record = {"reason": reason, "raw": raw, "stage": self.stage, "at": int(time.time() * 1000)}
        produce_waiting(self._producer, self.topic, json.dumps(record).encode(), key=key)
        self.sent += 1
        metrics.dead_lettered(self.stage, reason)
        log.warning("dead-lettered (%s): %s", self.stage, reason)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for delivery; returns how many records are still undelivered."""
        return self._producer.flush(timeout)
