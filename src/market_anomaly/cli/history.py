"""Flags and helpers shared by `train`, `score` and `evaluate`: candle files in, a base parameter file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from market_anomaly.cli import options

INPUT_HELP = ("candle file(s), CSV or Parquet: open, high, low, close, volume and open_time (ms) or timestamp "
              "(ISO or ms); symbol column optional when the file name starts with it (BTCUSDT_1m.csv)")



def add_history_arguments(parser: argparse.ArgumentParser, base_help: str, topic: bool = False) -> None:
    """--input FILES (or, with ``topic``, --topic NAME and the Kafka flags) and --base PARAMS."""
    if topic:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--input", nargs="+", metavar="FILE", help=INPUT_HELP)  # text: may be a URI (--spark)
        source.add_argument("--topic", help="read every candle now in this Kafka topic instead (e.g. crypto-candles)")
        options.add_kafka_arguments(parser)
    else:
        parser.add_argument("--input", nargs="+", required=True, type=Path, metavar="FILE", help=INPUT_HELP)
    parser.add_argument("--base", type=Path, default=None, metavar="PARAMS",
                        help=f"{base_help} (its model file is not needed; default: built-in defaults)")



def base_document(path: Path | None) -> dict | None:
    """The JSON of an existing parameter file, validated (its model file is not needed), or None for the defaults."""
    if path is None:
        return None
    from market_anomaly.core.params import InvalidParams, params_from_dict

    try:
        return params_from_dict(json.loads(path.read_text()), path).to_json()
    except (OSError, ValueError) as error:
        raise InvalidParams(path, str(error)) from None
