"""Flags several commands share: Kafka (``--bootstrap-servers``, ``-X``), Spark sessions (``--master``, ``--conf``),
Prometheus metrics (``--metrics-port``, ``--metrics-host``), the database's retention (``--retention-days``).

Kafka client settings pass through verbatim with ``-X key=value`` (the kcat convention),
e.g. ``-X security.protocol=SASL_SSL``, and win over the project's defaults.
"""

from __future__ import annotations

import argparse

from market_anomaly import config


def key_value(pair: str) -> str:
    """argparse type of the pass-through flags (-X, --conf, --source-option): a bad pair is a usage error."""
    key, sep, _ = pair.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{pair!r} is not KEY=VALUE")
    return pair


def kline_interval(text: str) -> str:
    """argparse type of --interval: one of Binance's kline intervals, else a usage error listing them."""
    from market_anomaly.candles.validation import interval_ms

    try:
        interval_ms(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))
    return text


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is not positive" if least == 1 else f"{value} is below {least}")
    return value


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type of counts where 0 means "none" or "no limit"."""
    return _whole_number(text, 0)


def parse_pairs(pairs: list[str] | None) -> dict[str, str]:
    """Turn ``["acks=all", "linger.ms=5"]`` into a dict (the value may hold ``=``); a pair without ``=`` is an error."""
    return {key.strip(): value.strip() for key, _, value in (key_value(pair).partition("=") for pair in pairs or [])}


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """The Kafka flags every command that talks to Kafka accepts."""
    parser.add_argument(
        "--bootstrap-servers", default=config.env("BOOTSTRAP_SERVERS", config.DEFAULT_BOOTSTRAP),
        help="Kafka cluster to use (env MARKET_ANOMALY_BOOTSTRAP_SERVERS; default: %(default)s)",
    )
    parser.add_argument(
        "-X", "--kafka-config", action="append", default=[], metavar="KEY=VALUE", type=key_value,
        help="extra Kafka client setting, passed through verbatim; repeatable. Secrets (SASL, TLS keys) belong in "
             f"the environment ({config.ENV_PREFIX}{config.KAFKA_ENV_PREFIX}SASL_PASSWORD=...) or "
             "--kafka-config-file: flags show in process lists",
    )
    parser.add_argument(
        "--kafka-config-file", type=kafka_properties_file, default=config.env("KAFKA_CONFIG_FILE", None),
        metavar="FILE",
        help="Kafka client settings from a properties file (KEY=VALUE lines, as Kafka's own tools take); "
             f"{config.ENV_PREFIX}{config.KAFKA_ENV_PREFIX}<KEY> variables win over it, -X over both (env "
             "MARKET_ANOMALY_KAFKA_CONFIG_FILE)",
    )


def kafka_properties_file(path: str) -> dict[str, str]:
    """argparse type of --kafka-config-file: the file's settings; an unreadable or malformed file is a usage error."""
    try:
        return config.read_kafka_properties(path)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def kafka_client_config(args: argparse.Namespace) -> dict[str, str]:
    """confluent-kafka configuration from the common flags: the file, then the environment, then -X."""
    return config.kafka_settings(args.bootstrap_servers, getattr(args, "kafka_config_file", None),
                                 parse_pairs(args.kafka_config))


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """--master and --conf, for every command that starts a Spark session."""
    parser.add_argument("--master", default=config.env("SPARK_MASTER", "local[2]"),
                        help="Spark master when not under spark-submit (default: %(default)s)")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                        help="extra Spark setting, e.g. --conf spark.sql.shuffle.partitions=8; repeatable")


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=int(config.env("METRICS_PORT", "0")), metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 = none (env "
                             "MARKET_ANOMALY_METRICS_PORT; default: %(default)s)")
    parser.add_argument("--metrics-host", default=config.env("METRICS_HOST", "127.0.0.1"), metavar="HOST",
                        help="address the metrics endpoint binds; the default keeps it on this machine "
                             "(env MARKET_ANOMALY_METRICS_HOST; default: %(default)s)")


def retention_days(text: str) -> float:
    """argparse type of --retention-days: a number of days, 0 (keep everything) or more."""
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 <= days <= 100_000:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} is not between 0 (keep everything) and 100000 days")
    return days


def add_retention_argument(parser) -> None:
    """--retention-days, for ``detect`` and for ``up`` (which passes it to its job)."""
    parser.add_argument("--retention-days", type=retention_days, default=7.0, metavar="DAYS",
                        help="delete ordinary decisions from the database once they are this many days of market "
                             "time older than the newest candle (checked every market hour); anomalies are kept "
                             "forever; 0 = keep everything (default: %(default)s)")


def serve_metrics(role: str, args: argparse.Namespace) -> None:
    """Start ``role``'s /metrics endpoint from the flags; a port in use is a one-line error, not a traceback."""
    from market_anomaly import metrics

    try:
        metrics.serve(role, args.metrics_port, args.metrics_host)
    except OSError as error:
        raise SystemExit(f"{role}: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: "
                         f"{error.strerror or error}")
