"""Configuration shared by every command: paths, environment defaults, Kafka settings.

Precedence, as Kafka and Spark users expect: command-line flag > environment variable
(``MARKET_ANOMALY_*``) > configuration file > built-in default (the flags and the file are
``cli``'s: nothing below the command line sees argparse).
"""

from __future__ import annotations

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
