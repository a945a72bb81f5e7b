"""Scale-out benchmark (issue 10): catch-up throughput on a Spark standalone cluster of one worker, then of two.

    .venv/bin/python bench/cluster_scaling.py [--runs 3] [--symbols 200] [--candles-per-symbol 1000]

For each worker count (``--workers``, default 1 and 2; one core each), a local standalone
cluster is started (``market_anomaly.spark.standalone``, as `market-anomaly spark start` does),
``bench/pipeline_throughput.py --mode catch-up`` runs ``--runs`` times against it with
``detect --master spark://...`` (the driver on this machine, the stateful step on the
executors), and the cluster is stopped. Prints one JSON object: every run's throughput, the
median per worker count and the ratio of the last count's median to the first's. On a
machine with fewer free cores than workers plus the driver the ratio measures contention,
not scaling: say the load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from market_anomaly.spark.standalone import StandaloneCluster

BENCH = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, one core each (default: 1,2)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--candles-per-symbol", type=int, default=1000)
    parser.add_argument("--memory", default="2g", help="memory per worker (default: %(default)s)")
    args = parser.parse_args()

    results: dict[int, list[float]] = {}
    for workers in map(int, args.workers.split(",")):
        cluster = StandaloneCluster(Path(tempfile.mkdtemp(prefix=f"bench-cluster-{workers}-")), workers=workers,
                                    cores=1, memory=args.memory)
        cluster.start()
        try:
            results[workers] = [catch_up(cluster.master_url, args) for _ in range(args.runs)]
        finally:
            cluster.stop()
        print(f"{workers} worker(s): {results[workers]} candles/s", file=sys.stderr, flush=True)
    medians = {workers: statistics.median(runs) for workers, runs in results.items()}
    first, last = min(medians), max(medians)
    print(json.dumps({"runs_candles_per_s": results, "median_candles_per_s": medians,
                      "speedup": round(medians[last] / medians[first], 2), "symbols": args.symbols,
                      "candles_per_symbol": args.candles_per_symbol, "load_average": os.getloadavg()}))
    return 0


def catch_up(master_url: str, args: argparse.Namespace) -> float:
    finished = subprocess.run(
        [sys.executable, str(BENCH / "pipeline_throughput.py"), "--mode", "catch-up", "--symbols", str(args.symbols),
         "--candles-per-symbol", str(args.candles_per_symbol), f"--job-arg=--master={master_url}"],
        capture_output=True, text=True, check=True)
    return float(json.loads(finished.stdout)["throughput_candles_per_s"])


if __name__ == "__main__":
    sys.exit(main())
