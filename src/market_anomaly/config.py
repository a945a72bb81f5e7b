"""Configuration shared by every command: paths, environment defaults, Kafka settings.

Precedence, as Kafka and Spark users expect: command-line flag > environment variable
(``MARKET_ANOMALY_*``) > built-in default. Kafka client settings pass through verbatim
with ``-X key=value`` (the kcat convention), e.g. ``-X security.protocol=SASL_SSL``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ENV_PREFIX = "MARKET_ANOMALY_"

CANDLES_TOPIC = "crypto-candles"
DEAD_LETTER_TOPIC = "crypto-candles-dlq"
ANOMALIES_TOPIC = "crypto-anomalies"
DEFAULT_BOOTSTRAP = "localhost:9092"
DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT,ADAUSDT,DOGEUSDT,AVAXUSDT"
BINANCE_WS_URL = "wss://stream.binance.com:9443"
BINANCE_REST_URL = "https://api.binance.com"


def env(name: str, default: str) -> str:
    """Value of ``MARKET_ANOMALY_<NAME>`` or ``default``."""
    return os.environ.get(ENV_PREFIX + name, default)


def home_dir() -> Path:
    """Where runtime state lives: broker data, checkpoints, logs, the SQLite database."""
    return Path(env("HOME", "var")).resolve()


def cache_dir() -> Path:
    """Where downloaded jars are kept between runs (survives a fresh clone)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "market-anomaly"
    return Path(env("CACHE", str(default))).resolve()


def model_params_path() -> Path:
    return Path(env("MODEL_PARAMS", "model_params.json")).resolve()


def parse_symbols(text: str) -> list[str]:
    """``"btcusdt, ETHUSDT,"`` -> ``["BTCUSDT", "ETHUSDT"]`` (the --symbols syntax of every command)."""
    return [symbol.strip().upper() for symbol in text.split(",") if symbol.strip()]


def key_value(pair: str) -> str:
    """argparse type of the pass-through flags (-X, --conf, --source-option): a bad pair is a usage error."""
    key, sep, _ = pair.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{pair!r} is not KEY=VALUE")
    return pair


def parse_pairs(pairs: list[str] | None) -> dict[str, str]:
    """Turn ``["acks=all", "linger.ms=5"]`` into a dict (the value may hold ``=``); a pair without ``=`` is an error."""
    return {key.strip(): value.strip() for key, _, value in (key_value(pair).partition("=") for pair in pairs or [])}


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """The Kafka flags every command that talks to Kafka accepts."""
    parser.add_argument(
        "--bootstrap-servers", default=env("BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
        help="Kafka cluster to use (env MARKET_ANOMALY_BOOTSTRAP_SERVERS; default: %(default)s)",
    )
    parser.add_argument(
        "-X", "--kafka-config", action="append", default=[], metavar="KEY=VALUE", type=key_value,
        help="extra Kafka client setting, passed through verbatim; repeatable",
    )


def kafka_client_config(args: argparse.Namespace) -> dict[str, str]:
    """confluent-kafka configuration from the common flags."""
    return {"bootstrap.servers": args.bootstrap_servers, **parse_pairs(args.kafka_config)}
