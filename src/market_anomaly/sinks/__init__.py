"""Where decisions go: console table, Kafka topic, database, webhook alerts.

The Spark job calls ``add_sink_arguments(parser)`` for the ``detect`` flags, then
``build_sinks(SinkOptions.from_args(args))`` and, per micro-batch, ``Sinks.write(frame)``;
its progress listener calls ``Sinks.record_health(progress)``. One failing sink never
stops the stream or the other sinks: its error is logged with a running count. Only the
database fails loudly, at startup, because a bad ``--db`` is a configuration mistake.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from market_anomaly import config
from market_anomaly.sinks.common import CONFIDENCE_LEVELS, hide_password

log = logging.getLogger(__name__)

DISABLED = "none"
WEBHOOK_URLS_ENV = "WEBHOOK_URLS"  # MARKET_ANOMALY_WEBHOOK_URLS, comma-separated
ALERT_STATE = Path("market-anomaly") / "alert-episodes.json"  # inside detect's checkpoint (Spark ignores it)


def add_sink_arguments(parser: argparse.ArgumentParser) -> None:
    from market_anomaly.sinks.alerts import FORMATS
    from market_anomaly.sinks.console import MODES
    from market_anomaly.sinks.database import default_url

    group = parser.add_argument_group("outputs")
    group.add_argument("--db", default=config.env("DB", default_url()), metavar="URL",
                       help="database for decisions: sqlite:///PATH or postgresql://USER@HOST:PORT/DB; "
                            "'none' disables (env MARKET_ANOMALY_DB; default: %(default)s)")
    group.add_argument("--anomalies-topic", default=config.ANOMALIES_TOPIC, metavar="TOPIC",
                       help="Kafka topic for decisions as JSON, keyed by symbol; 'none' disables "
                            "(default: %(default)s)")
    group.add_argument("--anomalies-only", action="store_true",
                       help="produce only anomalies to the topic, not every decision")
    group.add_argument("--console", default="table", choices=MODES,
                       help="live table on stdout: every decision, only anomalies, or off (default: %(default)s)")
    group.add_argument("--webhook", action="append", default=[], metavar="URL",
                       help="POST alerts here; repeatable. URLs with tokens belong in the environment "
                            "(MARKET_ANOMALY_WEBHOOK_URLS, comma-separated): flags show in process lists")
    group.add_argument("--webhook-format", default="slack", choices=FORMATS,
                       help="Slack-compatible {\"text\": ...} or the alert as generic JSON (default: %(default)s)")
    group.add_argument("--alert-min-confidence", default="MEDIUM", type=str.upper, choices=CONFIDENCE_LEVELS[1:],
                       help="alert on anomalies at or above this confidence (default: %(default)s)")
    group.add_argument("--alert-cooldown", type=float, default=900.0, metavar="SECONDS",
                       help="per symbol, anomalies this close (market time) are one episode: one alert, "
                            "then at most one update per cooldown (default: %(default)s)")


def _enabled(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("", DISABLED) else value.strip()


@dataclass
class SinkOptions:
    db_url: str | None = None
    anomalies_topic: str | None = None
    anomalies_only: bool = False
    console: str = "table"
    webhooks: list[str] = field(default_factory=list)
    webhook_format: str = "slack"
    alert_min_confidence: str = "MEDIUM"
    alert_cooldown: float = 900.0
    alert_state: Path | None = None  # where alert episodes survive a restart (detect: in its checkpoint)
    kafka_config: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SinkOptions":
        from_env = [url.strip() for url in config.env(WEBHOOK_URLS_ENV, "").split(",") if url.strip()]
        return cls(
            db_url=_enabled(args.db),
            anomalies_topic=_enabled(args.anomalies_topic),
            anomalies_only=args.anomalies_only,
            console=args.console,
            webhooks=list(dict.fromkeys([*args.webhook, *from_env])),
            webhook_format=args.webhook_format,
            alert_min_confidence=args.alert_min_confidence,
            alert_cooldown=args.alert_cooldown,
            alert_state=Path(args.checkpoint_dir) / ALERT_STATE if getattr(args, "checkpoint_dir", None) else None,
            kafka_config=config.kafka_client_config(args),
        )


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
        log.info("sink database: %s", hide_password(options.db_url))
    if options.anomalies_topic:
        sinks.append(KafkaTopicSink(options.kafka_config, options.anomalies_topic, options.anomalies_only))
        log.info("sink kafka: topic %s%s", options.anomalies_topic, " (anomalies only)" if options.anomalies_only else "")
    if options.webhooks:
        sinks.append(AlertSink(options.webhooks, options.webhook_format, options.alert_min_confidence,
                               options.alert_cooldown, state_path=options.alert_state))
    if options.console != "off":
        sinks.append(ConsoleSink(options.console))
    return Sinks(sinks)
