"""`market-anomaly train | score | evaluate`: the detection core on candle files."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from market_anomaly import config

log = logging.getLogger("market_anomaly.detection")

INPUT_HELP = ("candle file(s), CSV or Parquet: open, high, low, close, volume and open_time (ms) or timestamp "
              "(ISO or ms); symbol column optional when the file name starts with it (BTCUSDT_1m.csv)")


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
    evaluate.set_defaults(handler=run_evaluate)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """`train`'s flags (also parsed by spark/training.py under spark-submit)."""
    from market_anomaly.spark.job import add_session_arguments

    add_history_arguments(parser, base_help="existing parameter file whose thresholds and windows to keep",
                          topic=True)
    parser.add_argument("--output", type=Path, default=Path("model_params.json"),
                        help="parameter file to write; the model file goes next to it (default: %(default)s)")
    parser.add_argument("--alarm-quantile", type=float, default=None,
                        help="share of training candles the learned model may flag alone (default: 0.999)")
    parser.add_argument("--tune-injections", type=int, default=None, metavar="N",
                        help="events injected into the training candles to tune the fusion's offsets for the most "
                             "events caught within the false-alarm budget (default: 1500; 0: no tuning)")
    parser.add_argument("--spark", action="store_true",
                        help="train as a Spark batch job (session from --master and --conf, or from spark-submit), "
                             "for history too large for one process: the candles stay on the executors (one "
                             "series must fit one executor) and the driver receives only per-candle score columns, "
                             "about N x 80 bytes for N candles (the widest passes: 9 detector scores per candle; "
                             "21 fusion candidates of the candles that could be flagged, 40%% of the Binance "
                             "files), twice that while a pass's result arrives. Same result as without --spark; "
                             "--input may then also be globs, directories or Hadoop URIs")
    add_session_arguments(parser)


def add_history_arguments(parser: argparse.ArgumentParser, base_help: str, topic: bool = False) -> None:
    """--input FILES (or, with ``topic``, --topic NAME and the Kafka flags) and --base PARAMS."""
    if topic:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--input", nargs="+", metavar="FILE", help=INPUT_HELP)  # text: may be a URI (--spark)
        source.add_argument("--topic", help="read every candle now in this Kafka topic instead (e.g. crypto-candles)")
        config.add_kafka_arguments(parser)
    else:
        parser.add_argument("--input", nargs="+", required=True, type=Path, metavar="FILE", help=INPUT_HELP)
    parser.add_argument("--base", type=Path, default=None, metavar="PARAMS",
                        help=f"{base_help} (its model file is not needed; default: built-in defaults)")


def run_train(args: argparse.Namespace) -> int:
    from market_anomaly.detection.candle_files import read_topic, series_by_symbol

    sources = [f"kafka:{args.topic}"] if args.topic else [Path(path).name for path in args.input]
    if args.spark:
        from market_anomaly.spark.training import training_series

        with training_series(args) as series:
            return _train_and_write(args, series, sources)
    if args.topic:
        series = series_by_symbol([], read_topic(config.kafka_client_config(args), args.topic))
    else:
        series = series_by_symbol(args.input)
    return _train_and_write(args, series, sources)


def _train_and_write(args: argparse.Namespace, series, sources: list[str]) -> int:
    from market_anomaly.detection.training import DEFAULT_ALARM_QUANTILE, DEFAULT_TUNE_INJECTIONS, train, write_params

    started = time.perf_counter()
    params = train(series, base=_base_document(args.base),
                   alarm_quantile=args.alarm_quantile or DEFAULT_ALARM_QUANTILE, sources=sources,
                   tune_injections=DEFAULT_TUNE_INJECTIONS if args.tune_injections is None else args.tune_injections)
    model_path = write_params(params, args.output)
    log.info("trained on %d candles of %d series in %.1fs; wrote %s and %s", params.trained_on["candles"],
             len(params.trained_on["series"]), time.perf_counter() - started, args.output, model_path)
    return 0


def run_score(args: argparse.Namespace) -> int:
    import pyarrow.csv
    import pyarrow.parquet

    from market_anomaly.detection import DetectionEngine, load_params, mark_market_events
    from market_anomaly.detection.candle_files import read_candles

    started = time.perf_counter()
    params = load_params(args.params)
    candles = read_candles(args.input)
    engine = DetectionEngine(params)
    decisions = [engine.process(symbol, frame, None)[0] for symbol, frame in candles.groupby("symbol", sort=True)]
    result = mark_market_events(pd.concat(decisions, ignore_index=True), params)
    duplicates = len(candles) - len(result)
    if duplicates:
        log.warning("%d duplicate candles (same symbol and open_time) scored once", duplicates)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table = pyarrow.Table.from_pandas(result, preserve_index=False)
    if args.output.suffix.lower() in (".parquet", ".pq"):
        pyarrow.parquet.write_table(table, args.output)
    else:
        pyarrow.csv.write_csv(table, args.output)  # ten times faster than DataFrame.to_csv
    elapsed = time.perf_counter() - started
    log.info("scored %d candles (%d anomalies) in %.2fs -> %s", len(result), int(result["is_anomaly"].sum()),
             elapsed, args.output)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from market_anomaly.detection.candle_files import series_by_symbol
    from market_anomaly.detection.evaluation import evaluate, format_report

    report = evaluate(series_by_symbol(args.input), injections=args.injections, seed=args.seed,
                      train_fraction=args.train_fraction, base=_base_document(args.base),
                      development=args.development)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _base_document(path: Path | None) -> dict | None:
    """The JSON of an existing parameter file, validated (its model file is not needed), or None for the defaults."""
    if path is None:
        return None
    from market_anomaly.detection.params import InvalidParams, params_from_dict

    try:
        return params_from_dict(json.loads(path.read_text()), path).to_json()
    except (OSError, ValueError) as error:
        raise InvalidParams(path, str(error)) from None
