"""`market-anomaly evaluate`: leave-one-series-out recall, false alarms and labelled real events."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from market_anomaly.cli.history import add_history_arguments, base_document


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="leave one series out: injected recall, false alarms and labelled real events, vs a naive "
                         "baseline",
        description="For every series in turn, train on all the other series and score the one left out (what "
                    "a pair new to the model gets; its first 1000 candles only warm the state, like a live seed). "
                    "Three blocks, per series and pooled: (1) labelled anomalies injected into it (price spike, "
                    "volume burst, volatility burst, flash crash, pump-and-dump): recall within 5 minutes per "
                    "kind and median delay; (2) its untouched candles: false-alarm episodes per symbol-day at "
                    "every confidence level; (3) with --events, labelled real events (e.g. announced "
                    "pump-and-dumps): flagged within [-5, +20] minutes, false alarms outside [-60, +180] "
                    "minutes. The same for a naive rolling 60-minute z-score (threshold 3 on return and "
                    "volume), and an operating curve around each fold's trained threshold.")
    add_history_arguments(evaluate, base_help="parameter file whose windows and budget to train with")
    evaluate.add_argument("--events", type=Path, default=None, metavar="CSV",
                          help="labelled real events: a symbol column and a time column (ISO, epoch ms or "
                               "'YYYY-MM-DD HH.MM', UTC), e.g. pumps-2020/pump_events.csv")
    evaluate.add_argument("--injections", type=int, default=500,
                          help="events to inject, shared out over the series (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed for injections (default: %(default)s)")
    evaluate.add_argument("--tune-injections", type=int, default=None, metavar="N",
                          help="each fold's train --tune-injections (default: train's)")
    evaluate.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    evaluate.add_argument("--development", action="store_true",
                          help="the same on the first half of every series only, to compare parameter choices "
                               "without looking at the final figures")
    evaluate.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from market_anomaly.candles.files import series_by_symbol
    from market_anomaly.training.evaluation import evaluate, format_report, read_events

    report = evaluate(series_by_symbol(args.input), injections=args.injections, seed=args.seed,
                      base=base_document(args.base), events=read_events(args.events) if args.events else None,
                      development=args.development, tune_injections=args.tune_injections)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
