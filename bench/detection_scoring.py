"""Offline scoring throughput of the detection core, on one core.

Measures candles per second, best of ``--repeat`` runs:

- core: ``DetectionEngine.process`` over each symbol's whole series (what ``score`` and
  each Spark micro-batch run), features to decisions, state serialised;
- end to end: ``market-anomaly score`` on a CSV file (read, score, market events, write
  CSV or Parquet; formatting the 30 CSV columns is the slowest step);
- with ``--bucket SYMBOLSxCANDLES`` (repeatable, e.g. ``--bucket 2000x1 --bucket 200x1000``)
  instead: the stream's step, one state bucket of SYMBOLS warm symbols (300 candles of
  history each) getting CANDLES new candles each per call, decided by
  ``DetectionEngine.decide_bucket`` in one call and, for comparison, one call per symbol
  (how the step decided before); milliseconds per call and per symbol, median of ``--repeat`` calls.

Candles are synthetic (volatility clustering, fat tails, volume following volatility) unless
``--input`` names a candle file, which is then repeated to ``--candles`` per symbol.

    .venv/bin/python bench/detection_scoring.py [--symbols 20] [--candles 50000] [--repeat 5]
    .venv/bin/python bench/detection_scoring.py --bucket 2000x1 --bucket 200x1000 [--repeat 5]
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"  # one core, before NumPy loads its BLAS

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow  # noqa: E402

pyarrow.set_cpu_count(1)  # Arrow's CSV reader and writer are multi-threaded by default

from market_anomaly.core import DetectionEngine, load_params  # noqa: E402
from market_anomaly.candles.files import read_candles  # noqa: E402
from market_anomaly.cli.score import run_score  # noqa: E402
from market_anomaly.exchange.market import SYNTHETIC_START as START, synthetic_candles  # noqa: E402

def repeated_file(path: Path, symbol: str, n: int) -> pd.DataFrame:
    candles = read_candles(path)
    copies = -(-n // len(candles))
    frame = pd.concat([candles] * copies, ignore_index=True).iloc[:n].copy()
    frame["symbol"] = symbol
    frame["open_time"] = START + np.arange(n) * 60_000
    optional = [name for name in ("trades", "taker_buy_base", "tick_size") if name in frame]  # what the core reads
    return frame[["symbol", "open_time", "open", "high", "low", "close", "volume", *optional]]


def best_rate(run, candles: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return candles / best


BUCKET_HISTORY = 300  # candles each symbol has seen before the measured calls: its state is full-size


def bucket_shape(text: str) -> tuple[int, int]:
    symbols, candles = text.lower().split("x")
    return int(symbols), int(candles)


def bench_bucket(engine: DetectionEngine, symbols: int, candles: int, repeat: int) -> None:
    """Per call: one bucket of ``symbols`` symbols x ``candles`` new candles, all at once and one symbol at a time."""
    frames = [synthetic_candles(BUCKET_HISTORY + candles * repeat, seed, f"SYM{seed:04d}USDT")
              for seed in range(symbols)]
    start = {frame["symbol"].iloc[0]: engine.process(frame["symbol"].iloc[0], frame.iloc[:BUCKET_HISTORY], None)[1]
             for frame in frames}
    batches = [pd.concat([frame.iloc[BUCKET_HISTORY + call * candles:BUCKET_HISTORY + (call + 1) * candles]
                          for frame in frames], ignore_index=True) for call in range(repeat)]

    def timed(decide) -> float:
        states, seconds = dict(start), []
        for batch in batches:
            started = time.perf_counter()
            decide(batch, states)
            seconds.append(time.perf_counter() - started)
        return float(np.median(seconds))

    def in_one_call(batch, states):
        decided = engine.decide_bucket(batch, states)
        states.update(decided.states)
        decided.frame()

    def per_symbol(batch, states):
        parts = []
        for symbol, group in batch.groupby("symbol", sort=False):
            decided = engine.decide_bucket(group, states)
            states.update(decided.states)
            parts.append(decided.frame())
        pd.concat(parts, ignore_index=True)

    for label, decide in (("decide_bucket, one call", in_one_call), ("one call per symbol", per_symbol)):
        seconds = timed(decide)
        print(f"  {symbols} symbols x {candles} candles, {label + ':':<25} {seconds * 1000:>9,.1f} ms per call, "
              f"{seconds / symbols * 1e6:>8,.0f} us per symbol, {symbols * candles / seconds:>10,.0f} candles/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--candles", type=int, default=50_000, help="candles per symbol")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "model_params.json")
    parser.add_argument("--input", type=Path, default=None, help="candle file to repeat instead of synthetic data")
    parser.add_argument("--bucket", type=bucket_shape, action="append", default=[], metavar="SYMBOLSxCANDLES",
                        help="measure the stream's step instead: a state bucket of SYMBOLS symbols, CANDLES new "
                             "candles each per call (repeatable)")
    args = parser.parse_args()
    if args.bucket:
        engine = DetectionEngine(load_params(args.params))
        print(f"state bucket step, median of {args.repeat} calls, one core:")
        for symbols, candles in args.bucket:
            bench_bucket(engine, symbols, candles, args.repeat)
        return 0

    symbols = [f"SYM{i:03d}USDT" for i in range(args.symbols)]
    frames = {symbol: repeated_file(args.input, symbol, args.candles) if args.input
              else synthetic_candles(args.candles, seed, symbol)[["symbol", "open_time", "open", "high", "low",
                                                                    "close", "volume"]]
              for seed, symbol in enumerate(symbols)}
    total = args.symbols * args.candles
    engine = DetectionEngine(load_params(args.params))

    def score_core():
        for symbol, frame in frames.items():
            engine.process(symbol, frame, None)

    core = best_rate(score_core, total, args.repeat)
    end_to_end = {}
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "candles.csv"
        pd.concat(frames.values(), ignore_index=True).to_csv(source, index=False)
        for suffix in ("csv", "parquet"):
            command = argparse.Namespace(input=source, output=Path(directory) / f"decisions.{suffix}",
                                         params=args.params)
            end_to_end[suffix] = best_rate(lambda: run_score(command), total, max(1, args.repeat // 2))
    print(f"{total} candles ({args.symbols} symbols x {args.candles}), best of {args.repeat}, one core:")
    print(f"  core (DetectionEngine.process):          {core:>12,.0f} candles/s")
    print(f"  end to end (score, CSV in, CSV out):     {end_to_end['csv']:>12,.0f} candles/s")
    print(f"  end to end (score, CSV in, Parquet out): {end_to_end['parquet']:>12,.0f} candles/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
