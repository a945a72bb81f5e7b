"""The fixed cost of one Spark micro-batch on this machine, without any of our code.

A ``rate`` source makes ``--rows`` rows a second; a 1-second trigger turns them into micro-batches
of about that many rows (a burst of that many symbols). Each is taken through one of these
operators, over 16 groups (the stream's state buckets), doing no work, into a ``foreachBatch``
that calls ``toPandas`` (what the stream does), or into Spark's ``noop`` sink:

- ``applyInPandasWithState``: the operator the stream runs (a 1 KB state per group);
- ``mapInPandas``: a Python round trip without state or shuffle;
- ``none``: no Python operator;
- ``noop``: no Python operator and no ``foreachBatch``.

Prints one JSON object: the medians of the batches' ``triggerExecution`` and of each part of
Spark's ``durationMs`` (``addBatch``: running the batch; ``walCommit`` and ``commitOffsets``:
the checkpoint's offset and commit logs), after the first ``--skip`` batches.

    .venv/bin/python bench/spark_batch_floor.py --operator applyInPandasWithState [--rows 400] [--seconds 60]
        [--conf spark.sql.streaming.stateStore.providerClass=...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import pandas as pd

OPERATORS = ("applyInPandasWithState", "mapInPandas", "none", "noop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", choices=OPERATORS, default="applyInPandasWithState")
    parser.add_argument("--rows", type=int, default=400, help="rows a second, so about a batch (default: 400)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default: 60)")
    parser.add_argument("--skip", type=int, default=8, help="first batches left out, start-up (default: 8)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="a Spark setting to try (repeatable)")
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from market_anomaly.spark.session import build_session

    spark = build_session("spark-batch-floor", args.master, dict(item.split("=", 1) for item in args.conf))
    spark.sparkContext.setLogLevel("ERROR")
    rows = (spark.readStream.format("rate").option("rowsPerSecond", args.rows).load()
            .select((F.col("value") % 16).alias("bucket"), "value"))
    schema = "bucket long, value long"
    if args.operator == "applyInPandasWithState":
        def step(key, frames, state):
            state.update((b"x" * 1000,))
            yield pd.concat(list(frames))
        rows = rows.groupBy("bucket").applyInPandasWithState(step, outputStructType=schema,
                                                             stateStructType="blob binary",
                                                             outputMode="append", timeoutConf="NoTimeout")
    elif args.operator == "mapInPandas":
        rows = rows.mapInPandas(lambda frames: (frame for frame in frames), schema)
    writer = (rows.writeStream.format("noop") if args.operator == "noop"
              else rows.writeStream.foreachBatch(lambda frame, _: frame.toPandas()))
    query = (writer.trigger(processingTime="1 second").option("checkpointLocation", tempfile.mkdtemp())
             .start())
    time.sleep(args.seconds)
    progress = [p for p in query.recentProgress if p["batchId"] >= args.skip and p["numInputRows"] > 0]
    query.stop()
    spark.stop()
    if not progress:
        print("no batches measured; run longer", file=sys.stderr)
        return 1
    parts = {name: statistics.median(p["durationMs"].get(name, 0) for p in progress)
             for name in progress[0]["durationMs"]}
    print(json.dumps({"operator": args.operator, "master": args.master, "conf": args.conf, "rows_per_s": args.rows,
                      "batches": len(progress), "rows_per_batch": statistics.median(p["numInputRows"] for p in progress),
                      "batch_ms_median": parts.pop("triggerExecution"), "parts_ms_median": parts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
