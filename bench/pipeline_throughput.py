"""Pipeline benchmark: candles through Kafka and the Spark job, sustained throughput and end-to-end latency.

    .venv/bin/python bench/pipeline_throughput.py [--symbols 200] [--candles-per-symbol 300]

Phase 1 (throughput): a backlog of SYMBOLS x CANDLES real Binance 1m candles (each symbol a
different slice of ../shared/data/binance, so the detectors see real markets) is produced to a
fresh topic, then `market-anomaly detect` starts and works it off in micro-batches of at most
--batch-size records. Sustained throughput = candles decided after the first micro-batch /
time between the first and the last micro-batch (the first one pays Spark's start-up).

Phase 2 (latency): with the job caught up, candles are produced at --rate per second for
--duration seconds; latency = the decision's decided_at (when the job hands it to the sinks)
minus the candle's produced_at (when the producer sent it), p50 / p99 / max.

Decisions are read back from the job's Kafka output topic. A local broker is started in a
temporary directory unless --bootstrap-servers names one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, TopicPartition

from market_anomaly.candles.record import Candle
from market_anomaly.kafka import topics
from market_anomaly.kafka.broker import LocalBroker
from market_anomaly.producer.service import CandleProducer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance"
MINUTE_MS = 60_000


def real_markets(data: Path, symbols: int, candles: int) -> dict[str, pd.DataFrame]:
    """SYMBOLS synthetic tickers, each a different window of the real BTC/ETH minute candles."""
    sources = [pd.read_csv(path) for path in sorted(data.glob("*USDT_1m.csv"))]
    markets = {}
    for index in range(symbols):
        source = sources[index % len(sources)]
        start = (index * 977) % (len(source) - candles)  # spread the windows over the week
        markets[f"SYM{index:04d}USDT"] = source.iloc[start:start + candles].reset_index(drop=True)
    return markets


def candle(symbol: str, row, open_time: int) -> Candle:
    return Candle(symbol=symbol, interval="1m", open_time=open_time, close_time=open_time + MINUTE_MS - 1,
                  open=float(row.open), high=float(row.high), low=float(row.low), close=float(row.close),
                  volume=float(row.volume), quote_volume=float(row.volume * row.close), trades=0,
                  taker_buy_base=float(row.volume) / 2, taker_buy_quote=float(row.volume * row.close) / 2,
                  event_time=None, source="ws")


def read_decisions(bootstrap: str, topic: str, expected: int, timeout: float, job: subprocess.Popen) -> pd.DataFrame:
    """The job's decisions from its output topic, until ``expected`` arrived, ``timeout`` or the job died."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records, deadline = [], time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline and job.poll() is None:
            for message in consumer.consume(5000, timeout=1):
                if message.error() is None:
                    records.append(json.loads(message.value()))
    finally:
        consumer.close()
    return pd.DataFrame(records)


def start_job(bootstrap: str, candle_topic: str, output_topic: str, state: Path, batch_size: int, log_level: str,
              extra: list[str]):
    command = [
        sys.executable, "-m", "market_anomaly", "--log-level", log_level, "detect",
        "--bootstrap-servers", bootstrap, "--topic", candle_topic, "--anomalies-topic", output_topic,
        "--checkpoint-dir", str(state / "checkpoint"), "--db", "none", "--console", "off",
        "--max-offsets-per-trigger", str(batch_size), *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(state / "detect.log", "wb"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--candles-per-symbol", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=20_000, help="maxOffsetsPerTrigger for the backlog")
    parser.add_argument("--rate", type=float, default=200.0, help="candles per second in the latency phase")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the latency phase")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers", default=None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--job-log-level", default="WARNING", help="DEBUG shows Spark's timings per micro-batch")
    parser.add_argument("--job-arg", action="append", default=[], metavar="ARG",
                        help="extra `detect` argument, repeatable (e.g. --job-arg=--state-buckets=4)")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    broker = None
    if args.bootstrap_servers is None:
        broker = LocalBroker(state / "kafka", port=0)
        broker.start()
    bootstrap = args.bootstrap_servers or broker.bootstrap_servers
    run_id = uuid.uuid4().hex[:8]
    candle_topic, output_topic = f"bench-candles-{run_id}", f"bench-decisions-{run_id}"
    topics.ensure_topics({"bootstrap.servers": bootstrap}, {candle_topic: args.partitions, output_topic: args.partitions})
    producer = CandleProducer({"bootstrap.servers": bootstrap}, candle_topic, f"bench-dlq-{run_id}")
    job = None
    try:
        live_candles = int(args.rate * args.duration / args.symbols) + 1
        markets = real_markets(args.data, args.symbols, args.candles_per_symbol + live_candles)
        start_time = (int(time.time() * 1000) // MINUTE_MS - args.candles_per_symbol) * MINUTE_MS
        for step in range(args.candles_per_symbol):  # time-ordered, as an exchange would deliver them
            for symbol, market in markets.items():
                producer.send(candle(symbol, market.iloc[step], start_time + step * MINUTE_MS))
        producer.close()
        backlog = args.symbols * args.candles_per_symbol
        print(f"backlog: {backlog} candles ({args.symbols} symbols x {args.candles_per_symbol}) in {candle_topic}")

        job = start_job(bootstrap, candle_topic, output_topic, state, args.batch_size, args.job_log_level, args.job_arg)
        decided = read_decisions(bootstrap, output_topic, backlog, timeout=900, job=job)
        if len(decided) < backlog:
            print(f"only {len(decided)} of {backlog} decisions arrived")
            return 1
        batches = decided.groupby("decided_at").size().sort_index()
        span_s = (batches.index[-1] - batches.index[0]) / 1000
        after_first = batches.iloc[1:].sum()
        throughput = after_first / span_s if span_s > 0 else float("nan")

        producer = CandleProducer({"bootstrap.servers": bootstrap}, candle_topic, f"bench-dlq-{run_id}")
        interval, sent, began = 1.0 / args.rate, 0, time.monotonic()
        for step in range(args.candles_per_symbol, args.candles_per_symbol + live_candles):
            for symbol, market in markets.items():
                if sent >= args.rate * args.duration:
                    break
                time.sleep(max(0.0, began + sent * interval - time.monotonic()))
                producer.send(candle(symbol, market.iloc[step], start_time + step * MINUTE_MS))
                sent += 1
        producer.close()
        everything = read_decisions(bootstrap, output_topic, backlog + sent, timeout=120, job=job)
        live = everything[everything.open_time >= start_time + args.candles_per_symbol * MINUTE_MS]
        latency = (live.decided_at - live.produced_at).to_numpy()
        results = {
            "symbols": args.symbols, "backlog_candles": backlog, "micro_batches": len(batches),
            "throughput_candles_per_s": round(throughput, 1),
            "latency_rate_per_s": args.rate, "latency_candles": int(len(latency)),
            "latency_ms_p50": float(np.percentile(latency, 50)), "latency_ms_p99": float(np.percentile(latency, 99)),
            "latency_ms_max": float(latency.max()),
            "machine": f"{os.cpu_count()} cores, Spark local[2]",
        }
        print(json.dumps(results, indent=2))
        print(f"job log: {state / 'detect.log'}")
        return 0
    finally:
        if job is not None:
            job.terminate()
            job.wait(60)
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
