"""Spark's real-time mode (``trigger(realTime=...)``, Spark 4.1+) on this machine: can it carry the Python core?

Real-time mode runs one long batch per ``--batch-seconds`` and streams records through it instead of
planning a micro-batch each time, so it is the candidate for the 1-second burst latency that
micro-batches cannot reach (``spark_batch_floor.py``). This takes bursts of ``--burst`` records (one
per symbol, produced together, the live pattern) from a Kafka topic through one operator into a
Kafka topic, and times each burst from its last produce to its last record on the output topic:

- ``none``: no Python operator (projections only, what real-time mode supports in Spark 4.2);
- ``mapInPandas``, ``pandas_udf``, ``udf``: a Python operator that returns its input unchanged (they
  are outside real-time mode's allowlist, so ``spark.sql.streaming.realTimeMode.allowlistCheck`` is
  turned off for them).

Prints one JSON object: each burst's latency, their median and largest (a burst not out within
``--wait`` seconds counts as that wait).

    .venv/bin/python bench/spark_real_time_mode.py --bootstrap-servers 127.0.0.1:9092 --operator none
        [--burst 400] [--bursts 12] [--batch-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid

import pandas as pd

OPERATORS = ("none", "mapInPandas", "pandas_udf", "udf")


def with_operator(records, operator: str):
    """``records`` (key, value) through ``operator``, unchanged."""
    from pyspark.sql import functions as F

    if operator == "mapInPandas":
        return records.mapInPandas(lambda frames: (frame for frame in frames), "key binary, value binary")
    if operator == "pandas_udf":
        same = F.pandas_udf(lambda values: values, "binary")
    elif operator == "udf":
        same = F.udf(lambda value: value, "binary")
    else:
        return records
    return records.select("key", same("value").alias("value"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--operator", choices=OPERATORS, default="none")
    parser.add_argument("--burst", type=int, default=400, help="records a burst (default: 400)")
    parser.add_argument("--bursts", type=int, default=12, help="bursts to time (default: 12)")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between bursts' starts (default: 3)")
    parser.add_argument("--wait", type=float, default=20.0, help="longest wait for a burst (default: 20 s)")
    parser.add_argument("--batch-seconds", type=int, default=30, help="real-time mode's batch (default: 30)")
    parser.add_argument("--partitions", type=int, default=4, help="topic partitions (default: 4)")
    args = parser.parse_args()

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from market_anomaly.spark.session import build_session

    run = uuid.uuid4().hex[:8]
    source, target = f"real-time-in-{run}", f"real-time-out-{run}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap_servers})
    for future in admin.create_topics([NewTopic(source, args.partitions, 1), NewTopic(target, args.partitions, 1)]).values():
        future.result()
    # real-time mode runs every source partition as one long task at once: a core slot for each
    spark = build_session("spark-real-time-mode", f"local[{args.partitions}]",
                          {"spark.sql.streaming.realTimeMode.allowlistCheck": str(args.operator == "none").lower()})
    spark.sparkContext.setLogLevel("ERROR")
    records = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", args.bootstrap_servers)
               .option("subscribe", source).option("startingOffsets", "latest").load().select("key", "value"))
    query = (with_operator(records, args.operator).writeStream.format("kafka")
             .option("kafka.bootstrap.servers", args.bootstrap_servers).option("topic", target)
             .option("checkpointLocation", tempfile.mkdtemp()).outputMode("update")
             .trigger(realTime=f"{args.batch_seconds} seconds").start())
    time.sleep(15)  # the first long batch's tasks start and subscribe
    consumer = Consumer({"bootstrap.servers": args.bootstrap_servers, "group.id": target,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([target])
    producer = Producer({"bootstrap.servers": args.bootstrap_servers, "linger.ms": 5})
    latencies, arrived = [], {}
    for burst in range(args.bursts):
        started = time.time()
        for symbol in range(args.burst):
            producer.produce(source, key=f"S{symbol:04d}".encode(), value=json.dumps({"burst": burst}).encode())
        producer.flush()
        produced = time.time()
        while arrived.get(burst, 0) < args.burst and time.time() < produced + args.wait:
            message = consumer.poll(0.02)
            if message is not None and not message.error():
                number = json.loads(message.value())["burst"]
                arrived[number] = arrived.get(number, 0) + 1
        latencies.append(round(min(time.time() - produced, args.wait), 3))
        time.sleep(max(0.0, args.every - (time.time() - started)))
    query.stop()
    spark.stop()
    consumer.close()
    print(json.dumps({"operator": args.operator, "burst": args.burst, "batch_seconds": args.batch_seconds,
                      "latency_s_median": statistics.median(latencies), "latency_s_max": max(latencies),
                      "latencies_s": latencies}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
