"""Offline scoring throughput of the detection core, on one core.

Measures candles per second, best of ``--repeat`` runs:

- core: ``DetectionEngine.process`` over each symbol's whole series (what ``score`` and
  each Spark micro-batch run), features to decisions, state serialised;
- end to end: ``market-anomaly score`` on a CSV file (read, score, market events, write
  CSV or Parquet; formatting the 30 CSV columns is the slowest step).

Candles are synthetic (volatility clustering, fat tails, volume following volatility) unless
``--input`` names a candle file, which is then repeated to ``--candles`` per symbol.

    .venv/bin/python bench/detection_scoring.py [--symbols 20] [--candles 50000] [--repeat 5]
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
    return frame[["symbol", "open_time", "open", "high", "low", "close", "volume"]]


def best_rate(run, candles: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return candles / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--candles", type=int, default=50_000, help="candles per symbol")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "model_params.json")
    parser.add_argument("--input", type=Path, default=None, help="candle file to repeat instead of synthetic data")
    args = parser.parse_args()

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
