"""`market-anomaly score`: the detection core over a candle file, offline (the same code as the stream)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from market_anomaly import config

from market_anomaly.cli.history import INPUT_HELP

log = logging.getLogger("market_anomaly.train")


def register(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score", help="score a candle file offline: one decision per candle",
        description="Run the detection core over a candle file (the same code as the stream). Several symbols "
                    "are scored independently, each from an empty state (the first hours are warm-up). The "
                    "output has one row per distinct (symbol, open_time), sorted by symbol and time: a "
                    "duplicated candle is scored once (its first occurrence) and the number of duplicates "
                    "is logged; gaps are allowed (see the detection docs). CSV or Parquet by extension.")
    score.add_argument("--input", required=True, type=Path, metavar="IN", help=INPUT_HELP)
    score.add_argument("--output", required=True, type=Path, metavar="OUT", help="decisions file (.csv or .parquet)")
    score.add_argument("--params", type=Path, default=config.model_params_path(),
                       help="model parameters (default: %(default)s)")
    score.set_defaults(handler=run_score)


def run_score(args: argparse.Namespace) -> int:
    from market_anomaly.candles.files import read_candles
    from market_anomaly.core import load_params
    from market_anomaly.training.scoring import score_candles, write_decisions

    started = time.perf_counter()
    candles = read_candles(args.input)
    result = score_candles(candles, load_params(args.params))
    duplicates = len(candles) - len(result)
    if duplicates:
        log.warning("%d duplicate candles (same symbol and open_time) scored once", duplicates)
    write_decisions(result, args.output)
    elapsed = time.perf_counter() - started
    log.info("scored %d candles (%d anomalies) in %.2fs -> %s", len(result), int(result["is_anomaly"].sum()),
             elapsed, args.output)
    return 0
