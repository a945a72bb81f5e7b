"""`market-anomaly detect`: the Spark Structured Streaming consumer.

Kafka (``crypto-candles``) -> parse with an explicit schema and validate -> per symbol,
``applyInPandasWithState`` runs the pure detection core (the same code as offline
scoring) with its state in Spark's state store -> ``foreachBatch`` marks market-wide
events (a minute counted over all its batches) and hands decisions to the sinks; invalid records go to the
dead-letter topic.

Also runnable with spark-submit (the connector then comes from ``--packages``)::

    spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0 \\
        src/market_anomaly/cli/detect.py --bootstrap-servers localhost:9092
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from market_anomaly import config
from market_anomaly.cli import options
from market_anomaly.sinks import ALERT_STATE, SinkOptions
from market_anomaly.sinks.alerts import FORMATS, validate_webhook_url
from market_anomaly.sinks.common import CONFIDENCE_LEVELS
from market_anomaly.sinks.console import AUTO_ALL_SYMBOLS, MODES
from market_anomaly.sinks.database import SCORES_KEPT, default_url
from market_anomaly.spark import job

DISABLED = "none"
WEBHOOK_URLS_ENV = "WEBHOOK_URLS"  # MARKET_ANOMALY_WEBHOOK_URLS, comma-separated


def console_mode(text: str) -> str:
    """A console mode; ``table``, its name before ``all``, still works (configuration files say it)."""
    return "all" if text == "table" else text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect", help="run the Spark streaming consumer: candles in, anomaly decisions out",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_detect_arguments(parser)
    parser.set_defaults(handler=run)


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    add_reading_arguments(parser, "detect", "Spark checkpoint: a restarted job continues where it stopped",
                          "within one micro-batch")
    parser.add_argument("--trigger", default="0 seconds",
                        help="micro-batch interval, Spark syntax; '0 seconds' = as soon as data arrives")
    parser.add_argument("--max-offsets-per-trigger", type=options.non_negative_int, default=50_000, metavar="N",
                        help="most records a micro-batch takes, so a backlog (after a long stop, a replay) is worked "
                             "off in batches of bounded memory; 0: no cap, the whole backlog in one batch "
                             "(default: %(default)s)")
    parser.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE", type=options.key_value,
                        help="option for Spark's Kafka source as its docs name it, e.g. minPartitions=8 or "
                             "kafka.fetch.max.wait.ms=50 (the Java consumer's own settings; -X settings go to "
                             "every client, producers included); repeatable")
    options.add_session_arguments(parser)
    parser.add_argument("--state-buckets", type=int, default=16,
                        help="symbols share this many state groups (one Python call each per micro-batch); fixed "
                             "for a checkpoint's life, like spark.sql.shuffle.partitions; raise it for thousands "
                             "of symbols on a cluster (default: %(default)s)")
    add_running_arguments(parser)


def add_reading_arguments(parser: argparse.ArgumentParser, command: str, checkpoint_help: str,
                          params_take_effect: str) -> None:
    """What ``detect`` and ``decide`` read, and where they keep their progress."""
    options.add_kafka_arguments(parser)
    parser.add_argument("--topic", default=config.env("CANDLES_TOPIC", config.CANDLES_TOPIC),
                        help="candle topic to read (default: %(default)s)")
    parser.add_argument("--dead-letter-topic", default=config.DEAD_LETTER_TOPIC,
                        help="where invalid records go (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=config.model_params_path(),
                        help=f"model parameters; edits take effect {params_take_effect} (default: %(default)s)")
    parser.add_argument("--checkpoint-dir", type=Path, default=config.home_dir() / "checkpoints" / command,
                        help=f"{checkpoint_help} (default: %(default)s)")
    parser.add_argument("--starting-offsets", default="earliest", choices=["earliest", "latest"],
                        help="where a job without a checkpoint starts reading (default: %(default)s)")


def add_running_arguments(parser: argparse.ArgumentParser) -> None:
    """How long ``detect`` and ``decide`` run, their metrics, what they accept and where decisions go."""
    parser.add_argument("--run-for", type=float, default=None, metavar="SECONDS",
                        help="stop after this long (tests, benchmarks); default: until Ctrl-C")
    options.add_metrics_arguments(parser)
    add_input_arguments(parser)
    add_sink_arguments(parser)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """What the job accepts, and how much state it keeps."""
    group = parser.add_argument_group("inputs and state")
    group.add_argument("--symbols", default="", metavar="LIST",
                       help="comma-separated symbols to decide; candles of others go to the dead-letter topic "
                            "(default: any valid symbol)")
    group.add_argument("--max-symbols", type=int, default=10_000,
                       help="detector state for at most this many symbols, spread over the state buckets; a "
                            "symbol finding its bucket full replaces one that never warmed up and fell silent, "
                            "else its candles are dead-lettered (default: %(default)s)")
    group.add_argument("--symbol-expiry", type=float, default=24 * 3600.0, metavar="SECONDS",
                       help="forget a symbol's state after this long without a candle, in market time (default: "
                            "%(default)s = a day)")
    group.add_argument("--accept-future-candles", action="store_true",
                       help="accept candles dated more than one interval after the present: for a simulated "
                            "market that runs faster than the clock (`up` sets it for its simulator); by default "
                            "they are dead-lettered, as one would freeze its symbol")


def add_sink_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("outputs")
    group.add_argument("--db", default=config.env("DB", default_url()), metavar="URL",
                       help="database for decisions: sqlite:///PATH or postgresql://USER@HOST:PORT/DB; "
                            "'none' disables (env MARKET_ANOMALY_DB; default: %(default)s)")
    options.add_retention_argument(group)
    group.add_argument("--db-scores", default="anomalies", choices=SCORES_KEPT,
                       help="whose detector scores the database keeps (its extra column; the decisions topic "
                            "carries every decision's): 'anomalies' stores an ordinary decision in a third of the "
                            "bytes (SQLite: 172 a row against 585) and two thirds of the time; 'all' keeps every "
                            "decision's (default: %(default)s)")
    group.add_argument("--anomalies-topic", default=config.ANOMALIES_TOPIC, metavar="TOPIC",
                       help="Kafka topic for decisions as JSON, keyed by symbol; 'none' disables "
                            "(default: %(default)s)")
    group.add_argument("--anomalies-only", action="store_true",
                       help="produce only anomalies to the topic, not every decision")
    group.add_argument("--console", default="auto", choices=MODES, type=console_mode,
                       help="live table on stdout: 'all' decisions, only 'anomalies', a 'summary' line per "
                            "micro-batch, or 'off'; 'auto' prints every decision of a batch of up to "
                            f"{AUTO_ALL_SYMBOLS} symbols, else its anomalies and its summary (default: %(default)s)")
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


def enabled(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("", DISABLED) else value.strip()


def sink_options(args: argparse.Namespace) -> SinkOptions:
    """The sink flags (and MARKET_ANOMALY_WEBHOOK_URLS) as one value."""
    from_env = [url.strip() for url in config.env(WEBHOOK_URLS_ENV, "").split(",") if url.strip()]
    try:  # at start, and without the token: a URL without its scheme would otherwise fail at the first alert
        webhooks = tuple(validate_webhook_url(url) for url in dict.fromkeys([*args.webhook, *from_env]))
    except ValueError as error:
        raise SystemExit(f"detect: {error}")
    return SinkOptions(
        db_url=enabled(args.db),
        retention_days=args.retention_days,
        db_scores=args.db_scores,
        anomalies_topic=enabled(args.anomalies_topic),
        anomalies_only=args.anomalies_only,
        console=args.console,
        webhooks=webhooks,
        webhook_format=args.webhook_format,
        alert_min_confidence=args.alert_min_confidence,
        alert_cooldown=args.alert_cooldown,
        alert_state=Path(args.checkpoint_dir) / ALERT_STATE if getattr(args, "checkpoint_dir", None) else None,
        kafka_config=options.kafka_client_config(args),
    )


def detect_config(args: argparse.Namespace) -> job.DetectConfig:
    """``detect``'s flags as one frozen value."""
    try:
        return job.DetectConfig(
            kafka=options.kafka_client_config(args),
            params=Path(args.params),
            checkpoint_dir=Path(args.checkpoint_dir),
            sinks=sink_options(args),
            topic=args.topic,
            dead_letter_topic=args.dead_letter_topic,
            starting_offsets=args.starting_offsets,
            trigger=args.trigger,
            max_offsets_per_trigger=args.max_offsets_per_trigger,
            source_options=options.parse_pairs(args.source_option),
            master=args.master,
            spark_conf=options.parse_pairs(args.conf),
            state_buckets=args.state_buckets,
            run_for=args.run_for,
            symbols=tuple(config.parse_symbols(args.symbols)),
            max_symbols=args.max_symbols,
            symbol_expiry=args.symbol_expiry,
            accept_future_candles=args.accept_future_candles,
        )
    except ValueError as error:  # flags that contradict each other
        raise SystemExit(f"detect: {error}")


def run(args: argparse.Namespace) -> int:
    options.serve_metrics("detect", args)
    return job.run(detect_config(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``spark-submit .../cli/detect.py [detect flags]``: the same as ``market-anomaly detect``."""
    from market_anomaly.cli import main as command_line

    return command_line(["detect", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
