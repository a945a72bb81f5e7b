"""`market-anomaly train`: fit model_params.json (and its model file) on history, locally or as a Spark job.

Also runnable with spark-submit (``--spark`` implied; add ``--packages`` with the Kafka connector for ``--topic``)::

    spark-submit src/market_anomaly/cli/train.py --input 'hdfs:///candles/*.parquet' --output model_params.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from market_anomaly.cli import options
from market_anomaly.cli.history import add_history_arguments, base_document
from market_anomaly.training.evaluation import read_announced_events
from market_anomaly.training.train import (DEFAULT_ALARM_QUANTILE, DEFAULT_TUNE_INJECTIONS, TrainConfig, train,
                                           write_params)

log = logging.getLogger("market_anomaly.train")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="fit the learned model, calibrate the detectors and set the alarm threshold on history",
        description="On historical candles only: fit the learned model (minor principal components of normal "
                    "activity), calibrate every detector's score (and every pair of detector groups) into a "
                    "surprise (-log10 of its tail probability on these candles), and set the alarm threshold "
                    "on the fused surprise so these candles raise at most consensus.false_alarm_budget alarm "
                    "episodes per symbol-day. Write the parameter file plus the model file next to it. "
                    "Windows, groups and the budget come from --base (default: the built-in defaults).")
    add_train_arguments(train)
    train.set_defaults(handler=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """`train`'s flags (also parsed by spark/training.py under spark-submit)."""
    add_history_arguments(parser, base_help="existing parameter file whose thresholds and windows to keep",
                          topic=True)
    parser.add_argument("--output", type=Path, default=Path("model_params.json"),
                        help="parameter file to write; the model file goes next to it (default: %(default)s)")
    parser.add_argument("--alarm-quantile", type=float, default=None,
                        help="share of training candles the learned model may flag alone (default: 0.999)")
    parser.add_argument("--tune-injections", type=int, default=None, metavar="N",
                        help="events injected into the training candles to tune the fusion's offsets for the most "
                             "events caught within the false-alarm budget (default: 1500; 0: no tuning)")
    parser.add_argument("--events", type=Path, default=None, metavar="CSV",
                        help="known real events (symbol, pump_time_utc_announced as YYYY-MM-DD HH.MM UTC, like "
                             "../shared/data/pumps-2020/pump_events.csv): the minutes from 60 before to 180 after "
                             "each count neither as false alarms for the budget nor for the confidence levels")
    parser.add_argument("--spark", action="store_true",
                        help="train as a Spark batch job (session from --master and --conf, or from spark-submit), "
                             "for history too large for one process: the candles stay on the executors (one "
                             "series must fit one executor) and the driver receives only per-candle score columns, "
                             "about N x 80 bytes for N candles (the widest passes: 9 detector scores per candle; "
                             "21 fusion candidates of the candles that could be flagged, 40%% of the Binance "
                             "files), twice that while a pass's result arrives. Same result as without --spark; "
                             "--input may then also be globs, directories or Hadoop URIs")
    options.add_session_arguments(parser)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """``train``'s fitting flags as one frozen value."""
    sources = [f"kafka:{args.topic}"] if args.topic else [Path(path).name for path in args.input]
    return TrainConfig(
        base=base_document(args.base),
        alarm_quantile=args.alarm_quantile or DEFAULT_ALARM_QUANTILE,
        tune_injections=DEFAULT_TUNE_INJECTIONS if args.tune_injections is None else args.tune_injections,
        sources=tuple(sources),
        known_events=tuple(read_announced_events(args.events).items()) if args.events else (),
    )


def run_train(args: argparse.Namespace) -> int:
    from market_anomaly.candles.files import series_by_symbol
    from market_anomaly.kafka.topics import read_candle_topic

    config = train_config(args)
    if args.spark:
        from market_anomaly.spark.training import training_series

        with training_series(args.master, options.parse_pairs(args.conf), inputs=args.input, topic=args.topic,
                             kafka=options.kafka_client_config(args) if args.topic else None) as series:
            return _train_and_write(series, config, args.output)
    if args.topic:
        series = series_by_symbol([], read_candle_topic(options.kafka_client_config(args), args.topic))
    else:
        series = series_by_symbol(args.input)
    return _train_and_write(series, config, args.output)


def _train_and_write(series, config: TrainConfig, output: Path) -> int:
    started = time.perf_counter()
    params = train(series, config)
    model_path = write_params(params, output)
    log.info("trained on %d candles of %d series in %.1fs; wrote %s and %s", params.trained_on["candles"],
             len(params.trained_on["series"]), time.perf_counter() - started, output, model_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``spark-submit .../cli/train.py [train flags]``: ``market-anomaly train --spark``."""
    from market_anomaly.cli import main as command_line

    return command_line(["train", "--spark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
