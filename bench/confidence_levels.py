"""Confidence on the simulator's market: the anomalies by level and the highest level each injected event reached.

Builds the market the `exchange` command would serve with the given flags (default: the demo's, as `up`
starts it: the default symbols, 1,000 candles of history, 6 random injections), scores its history and the
first ``--minutes`` live minutes offline with ``--params``, and prints the live anomalies by confidence and,
per injected event, its largest fused surprise, the highest confidence within 5 minutes of its end and the
reasons there. With LOW alone, `detect`'s default webhook path (MEDIUM+) never fires.

    .venv/bin/python bench/confidence_levels.py [--params model_params.json] [--minutes 300] [-- EXCHANGE FLAGS]
"""

from __future__ import annotations

import argparse

import pandas as pd

from market_anomaly.cli import build_parser
from market_anomaly.cli.exchange import build_market
from market_anomaly.core import load_params
from market_anomaly.sinks.common import confidence_rank
from market_anomaly.training.scoring import score_candles

MINUTE_MS = 60_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="model_params.json")
    parser.add_argument("--minutes", type=int, default=300, help="live minutes scored after the history")
    parser.add_argument("exchange", nargs="*", default=["--inject-random", "6"], help="flags of `exchange`")
    args = parser.parse_args()
    market, live_start = build_market(build_parser().parse_args(["exchange", *args.exchange]))
    candles = pd.concat([market.candles(symbol, None, live_start + args.minutes * MINUTE_MS, 1_000_000)
                         .assign(symbol=symbol) for symbol in market.symbols], ignore_index=True)
    decisions = score_candles(candles, load_params(args.params))
    live = decisions[decisions["open_time"] >= live_start]
    anomalies = live[live["is_anomaly"]]
    levels = {level: int((anomalies["confidence"] == level).sum()) for level in ("LOW", "MEDIUM", "HIGH")}
    print(f"{len(market.symbols)} symbols x {args.minutes} live minutes: {len(anomalies)} anomalies, {levels}")
    for label in sorted(market.labels, key=lambda label: label["open_time"]):
        near = live[(live["symbol"] == label["symbol"]) & (live["open_time"] >= label["open_time"])
                    & (live["open_time"] <= label["end_time"] + 5 * MINUTE_MS)]
        strongest = near.loc[near["surprise"].idxmax()]
        print(f"{label['kind']:<17} {label['symbol']:<10} magnitude {label['magnitude']:<7.3g} surprise "
              f"{strongest['surprise']:5.2f}  {max(near['confidence'], key=confidence_rank):<6}  {strongest['reasons']}")


if __name__ == "__main__":
    main()
