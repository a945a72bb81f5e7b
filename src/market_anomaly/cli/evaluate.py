"""`market-anomaly evaluate`: recall on injected anomalies and false alarms on real candles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from market_anomaly.cli.history import add_history_arguments, base_document


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="recall on injected anomalies and false alarms on real candles, vs a naive baseline",
        description="Train on the first part of each series, then on the held-out rest: inject labelled "
                    "anomalies (price spike, volume burst, volatility burst, flash crash, pump-and-dump), "
                    "score, and report recall within 5 minutes per kind, median delay, and false-alarm "
                    "episodes per symbol-day on the untouched candles; the same for a naive rolling 60-minute "
                    "z-score (threshold 3 on return and volume).")
    add_history_arguments(evaluate, base_help="parameter file whose thresholds to evaluate")
    evaluate.add_argument("--injections", type=int, default=200, help="events to inject (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed for injections (default: %(default)s)")
    evaluate.add_argument("--train-fraction", type=float, default=0.5,
                          help="leading share of each series used for training (default: %(default)s)")
    evaluate.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    evaluate.add_argument("--development", action="store_true",
                          help="evaluate inside the training part only (its first part trains, the rest tests), "
                               "to compare parameter choices without looking at the held-out part")
    evaluate.add_argument("--leave-one-out", action="store_true",
                          help="leave one series out: for each input series, train on all the others and evaluate "
                               "on it from an empty state (what a pair new to the model gets); --injections then "
                               "counts events per series")
    evaluate.add_argument("--events", type=Path, default=None, metavar="FILE",
                          help="with --leave-one-out: announced real events (symbol, pump_time_utc_announced), "
                               "reported as caught within [-5, +20] min, not counted as false alarms within "
                               "[-60, +180] min")
    evaluate.add_argument("--tune-injections", type=int, default=None, metavar="N",
                          help="with --leave-one-out: train's fusion tuning events per fold (default: train's)")
    evaluate.add_argument("--max-candles", type=int, default=None, metavar="N",
                          help="with --leave-one-out: only each series' first N candles (quick iteration only)")
    evaluate.add_argument("--train-candles", type=int, default=None, metavar="N",
                          help="with --leave-one-out: train each fold on only the first N candles of each other "
                               "series (cheaper folds; the held-out series is evaluated in full)")
    evaluate.set_defaults(handler=run_evaluate)



def run_evaluate(args: argparse.Namespace) -> int:
    from market_anomaly.candles.files import series_by_symbol
    from market_anomaly.training.evaluation import (evaluate, evaluate_leave_one_out, format_leave_one_out,
                                                    format_report, read_announced_events)

    if args.leave_one_out:
        report = evaluate_leave_one_out(
            series_by_symbol(args.input), injections=args.injections, seed=args.seed, base=base_document(args.base),
            events=read_announced_events(args.events) if args.events else None,
            tune_injections=args.tune_injections, max_candles=args.max_candles,
            train_candles=args.train_candles)
        print(format_leave_one_out(report))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    report = evaluate(series_by_symbol(args.input), injections=args.injections, seed=args.seed,
                      train_fraction=args.train_fraction, base=base_document(args.base),
                      development=args.development)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


