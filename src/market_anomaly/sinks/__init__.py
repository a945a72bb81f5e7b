"""Where decisions go: console table, Kafka topic, database, webhook alerts.

The Spark job calls ``build_sinks(options)`` with the ``SinkOptions`` the command line built
and, per micro-batch, ``Sinks.write(frame)``;
its progress listener calls ``Sinks.record_health(progress)``. One failing sink never
stops the stream or the other sinks: its error is logged with a running count. Only the
database fails loudly, at startup, because a bad ``--db`` is a configuration mistake.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from market_anomaly import metrics
from market_anomaly.config import redact

log = logging.getLogger(__name__)

ALERT_STATE = Path("market-anomaly") / "alert-episodes.json"  # inside detect's checkpoint (Spark ignores it)


@dataclass(frozen=True)
class SinkOptions:
    """Which sinks ``detect`` writes to, and how (built once by the command line, ``cli.detect``)."""

    db_url: str | None = None
    anomalies_topic: str | None = None
    anomalies_only: bool = False
    console: str = "table"
    webhooks: tuple[str, ...] = ()
    webhook_format: str = "slack"
    alert_min_confidence: str = "MEDIUM"
    alert_cooldown: float = 900.0
    alert_state: Path | None = None  # where alert episodes survive a restart (detect: in its checkpoint)
    kafka_config: dict[str, str] = field(default_factory=dict)


class Sinks:
    """Fans each micro-batch out to every sink; a sink's failure is logged and counted, never raised."""

    def __init__(self, sinks: list):
        self.sinks = sinks
        self.failures = {sink.name: 0 for sink in sinks}

    def _guarded(self, sink, action: str, call) -> None:
        try:
            call()
        except Exception as error:
            self.failures[sink.name] += 1
            metrics.SINK_FAILURES.labels(sink=sink.name).inc()
            # The traceback once; a sink that stays down (say, Kafka) then costs one line per batch.
            log.error("sink %s: %s failed: %s (%d failure(s) so far); the stream continues",
                      sink.name, action, error, self.failures[sink.name], exc_info=self.failures[sink.name] == 1)

    def write(self, decisions: pd.DataFrame) -> None:
        for sink in self.sinks:
            self._guarded(sink, f"writing {len(decisions)} decision(s)", lambda: sink.write(decisions))

    def record_health(self, progress: dict) -> None:
        for sink in self.sinks:
            if hasattr(sink, "record_health"):
                self._guarded(sink, "recording health", lambda: sink.record_health(progress))

    def close(self) -> None:
        for sink in self.sinks:
            self._guarded(sink, "closing", sink.close)


def build_sinks(options: SinkOptions) -> Sinks:
    """The sinks ``options`` ask for; opens (and migrates) the database now so a bad URL fails at startup."""
    from market_anomaly.sinks.alerts import AlertSink
    from market_anomaly.sinks.console import ConsoleSink
    from market_anomaly.sinks.database import DatabaseSink, open_database
    from market_anomaly.sinks.kafka_topic import KafkaTopicSink

    sinks: list = []
    if options.db_url:
        sinks.append(DatabaseSink(open_database(options.db_url)))
        log.info("sink database: %s", redact(options.db_url))
    if options.anomalies_topic:
        sinks.append(KafkaTopicSink(options.kafka_config, options.anomalies_topic, options.anomalies_only))
        log.info("sink kafka: topic %s%s", options.anomalies_topic, " (anomalies only)" if options.anomalies_only else "")
    if options.webhooks:
        sinks.append(AlertSink(options.webhooks, options.webhook_format, options.alert_min_confidence,
                               options.alert_cooldown, state_path=options.alert_state))
    if options.console != "off":
        sinks.append(ConsoleSink(options.console))
    return Sinks(sinks)
