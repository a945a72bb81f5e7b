"""Pipeline benchmark: candles through Kafka and a runner into its sinks (Kafka topic and SQLite).

    .venv/bin/python bench/pipeline_throughput.py --mode catch-up --symbols 200 --candles-per-symbol 1000
    .venv/bin/python bench/pipeline_throughput.py --mode burst --symbols 400 --bursts 30
    .venv/bin/python bench/pipeline_throughput.py --mode burst --symbols 400 --interval 1s --bursts 60
    .venv/bin/python bench/pipeline_throughput.py --runner decide --mode burst --symbols 400 --bursts 30

--runner detect (default) is the Spark stream, --runner decide the low-latency consumer; the same sinks,
candles and measurements for both ("micro-batch" below is a decider's poll).

catch-up (after an outage, a replay, a backfill): a backlog of SYMBOLS x CANDLES real Binance
1m candles (each symbol a different slice of ../shared/data/binance, so the detectors see real
markets) is produced to a fresh topic, then the runner starts and works it off in
micro-batches of at most --batch-size records. Throughput = candles decided after the first
micro-batch / time between the first and the last micro-batch (the first one pays Spark's
start-up), from the decisions' decided_at. Meanwhile the benchmark only watches the output topic's
end offsets, and reads the decisions once they are all there: a reader alongside took 0.3-0.5 of the
2 cores from the runner.

burst (the live pattern: every interval all symbols close at once): after a warm-up backlog of
--warmup-candles per symbol has been decided, a burst of one candle per symbol is produced every
--burst-every seconds (default: the interval, capped at 10 s; bursts of 1m candles closer than a
minute are then ahead of the clock, so the job gets --accept-future-candles). A burst's latency is
from its last produce until both sinks have all its decisions: the last one on the job's output
topic (its Kafka timestamp) or, when later, the moment the database's symbols table shows every
symbol at the burst's candle (watched every 5 ms; the durable sinks write side by side), p50 / p99 /
max over --bursts bursts.

Either mode prints one JSON object: the figures, the settings, the job's peak RSS and PSS (driver, JVM
and Python workers together; PSS counts the pages the workers share once), its CPU time per candle decided (all its processes, start-up included,
until the last candle is decided) and its state store's memory. A local broker is started in a temporary
directory unless --bootstrap-servers names one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, TopicPartition

from market_anomaly.candles.record import Candle
from market_anomaly.candles.validation import interval_ms
from market_anomaly.kafka import topics
from market_anomaly.kafka.broker import LocalBroker, free_port
from market_anomaly.producer.service import CandleProducer
from process_memory import tree_cpu_seconds_by_command, tree_proportional_bytes, tree_resident_bytes  # bench/, the script's own directory

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance"
PARAMS = Path(__file__).resolve().parents[1] / "model_params.json"


def real_markets(data: Path, symbols: int, candles: int) -> dict[str, pd.DataFrame]:
    """SYMBOLS synthetic tickers, each a different window of the real BTC/ETH minute candles."""
    sources = [pd.read_csv(path) for path in sorted(data.glob("*USDT_1m.csv"))]
    markets = {}
    for index in range(symbols):
        source = sources[index % len(sources)]
        start = (index * 977) % (len(source) - candles)  # spread the windows over the week
        markets[f"SYM{index:04d}USDT"] = source.iloc[start:start + candles].reset_index(drop=True)
    return markets


def candle(symbol: str, row, interval: str, open_time: int) -> Candle:
    return Candle(symbol=symbol, interval=interval, open_time=open_time, close_time=open_time + interval_ms(interval) - 1,
                  open=float(row.open), high=float(row.high), low=float(row.low), close=float(row.close),
                  volume=float(row.volume), quote_volume=float(row.volume * row.close), trades=0,
                  taker_buy_base=float(row.volume) / 2, taker_buy_quote=float(row.volume * row.close) / 2,
                  event_time=None, source="ws")


class DecisionReader:
    """The job's output topic from offset 0: each decision's (symbol, open_time) and when the sink wrote it."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                                  "enable.auto.commit": False})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
        self.rows: list[tuple[str, int, int, int]] = []  # symbol, open_time, decided_at, written (Kafka timestamp)

    def read_until(self, expected: int, timeout: float, job: subprocess.Popen) -> int:
        deadline = time.monotonic() + timeout
        while len(self.rows) < expected and time.monotonic() < deadline and job.poll() is None:
            for message in self.consumer.consume(5000, timeout=0.2):
                if message.error() is None:
                    decision = json.loads(message.value())
                    self.rows.append((decision["symbol"], decision["open_time"], decision["decided_at"],
                                      message.timestamp()[1]))
        return len(self.rows)

    def wait_for_end_offsets(self, expected: int, timeout: float, job: subprocess.Popen) -> int:
        """Wait until the topic holds ``expected`` decisions, watching only its end offsets (reading them
        alongside would take a third of a core from the runner on this 2-core machine), then read them."""
        deadline = time.monotonic() + timeout
        while self.end_offsets() < expected and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
        return self.read_until(expected, timeout=max(1.0, deadline - time.monotonic()), job=job)

    def end_offsets(self) -> int:
        return sum(self.consumer.get_watermark_offsets(partition, timeout=10)[1]
                   for partition in self.consumer.assignment())

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["symbol", "open_time", "decided_at", "written"])

    def close(self) -> None:
        self.consumer.close()


class DatabaseWatcher:
    """When the job's database first holds each awaited candle time for every symbol, from its ``symbols`` table
    (one row per symbol, its newest candle; read-only, so the writer never waits), checked every 5 ms."""

    def __init__(self, path: Path, symbols: int):
        self.path, self.symbols = path, symbols
        self.awaited: list[int] = []  # candle open times, in the order they are produced
        self.seen_at: dict[int, int] = {}  # open time -> epoch ms when every symbol had it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import sqlite3

        connection = None
        while not self._stop.wait(0.005):
            pending = [t for t in self.awaited if t not in self.seen_at]
            if not pending:
                continue
            try:
                connection = connection or sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)
                done = connection.execute("SELECT COUNT(*) FROM symbols WHERE open_time >= ?",
                                          (pending[0],)).fetchone()[0]
            except sqlite3.Error:  # not created yet
                continue
            if done >= self.symbols:
                self.seen_at[pending[0]] = int(time.time() * 1000)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class PeakMemory:
    """Peak memory of a process and all its descendants (the JVM, Python workers), sampled every second: summed
    resident (RSS) and proportional (PSS, shared pages counted once) bytes."""

    def __init__(self, pid: int):
        self.pid, self.peak_bytes, self.peak_proportional_bytes = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.peak_bytes = max(self.peak_bytes, sum(tree_resident_bytes(self.pid).values()))
            self.peak_proportional_bytes = max(self.peak_proportional_bytes, tree_proportional_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes


def state_bytes(metrics_port: int) -> int | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    found = re.search(r"^market_anomaly_detect_state_bytes (\S+)$", text, re.MULTILINE)
    return int(float(found[1])) if found else None


def start_job(args, bootstrap: str, candle_topic: str, output_topic: str, state: Path, metrics_port: int,
              extra: list[str]) -> subprocess.Popen:
    batch_flag = "--max-offsets-per-trigger" if args.runner == "detect" else "--max-poll-records"
    command = [
        sys.executable, "-m", "market_anomaly", "--log-level", args.job_log_level, args.runner,
        "--bootstrap-servers", bootstrap, "--topic", candle_topic, "--anomalies-topic", output_topic,
        "--params", str(params_for_interval(args.interval, state)), "--checkpoint-dir", str(state / "checkpoint"),
        "--db", "none" if args.db == "none" else f"sqlite:///{state / 'decisions.db'}", "--console", "off",
        batch_flag, str(args.batch_size), "--metrics-port", str(metrics_port), *extra, *args.job_arg,
    ]
    if args.members > 1:  # members of one consumer group, under one shell so the tree's CPU and memory are theirs
        others = [[*command[:-len(extra) - len(args.job_arg) - 2], "--metrics-port", "0", *extra, *args.job_arg]
                  for _ in range(args.members - 1)]
        # On TERM the shell passes it to the members once (ignoring its own) and waits for them to close.
        script = ("trap 'trap \"\" TERM; kill 0; wait' TERM; "
                  + " & ".join(shlex.join(words) for words in [command, *others]) + " & wait")
        command = ["bash", "-c", script]
    # A process group of its own: the members' shell stops its group (kill 0), which must not include this one.
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(state / "detect.log", "wb"),
                            start_new_session=args.members > 1)


def params_for_interval(interval: str, state: Path) -> Path:
    """The shipped model (trained on 1m candles); for another interval, the same parameters with its interval_ms
    (the job checks candles against the model's interval)."""
    document = json.loads(PARAMS.read_text())
    if document["interval_ms"] == interval_ms(interval):
        return PARAMS
    path = state / f"model_params_{interval}.json"
    path.write_text(json.dumps({**document, "interval_ms": interval_ms(interval)}))
    for model in PARAMS.parent.glob(f"{PARAMS.stem}.*.npz"):  # the learned model the document names, beside it
        shutil.copy(model, state / model.name)
    return path


def throughput(decided: pd.DataFrame) -> tuple[float, int]:
    """Candles/s after the first micro-batch (a batch: one decided_at), and the number of micro-batches."""
    batches = decided.groupby("decided_at").size().sort_index()
    span_s = (batches.index[-1] - batches.index[0]) / 1000
    return (float(batches.iloc[1:].sum() / span_s) if span_s > 0 else float("nan")), len(batches)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("catch-up", "burst"), default="catch-up")
    parser.add_argument("--runner", choices=("detect", "decide"), default="detect",
                        help="the Spark stream (detect) or the low-latency consumer (decide) (default: %(default)s)")
    parser.add_argument("--members", type=int, default=1,
                        help="decide: this many members of one consumer group sharing the partitions (the first "
                             "one's state is reported) (default: %(default)s)")
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--candles-per-symbol", type=int, default=1000, help="catch-up: the backlog per symbol")
    parser.add_argument("--warmup-candles", type=int, default=100, help="burst: decided before the first burst")
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--burst-every", type=float, default=None, metavar="SECONDS",
                        help="burst: seconds between bursts (default: the interval, at most 10)")
    parser.add_argument("--interval", default="1m", choices=("1s", "1m"))
    parser.add_argument("--batch-size", type=int, default=50_000,
                        help="detect's --max-offsets-per-trigger or decide's --max-poll-records (default: theirs)")
    parser.add_argument("--db", choices=("sqlite", "none"), default="sqlite", help="the job's database sink")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers", default=None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--job-log-level", default="INFO", help="INFO logs each micro-batch's detection and sinks time")
    parser.add_argument("--job-arg", action="append", default=[], metavar="ARG",
                        help="extra `detect` argument, repeatable (e.g. --job-arg=--state-buckets=4)")
    args = parser.parse_args()

    step_ms = interval_ms(args.interval)
    burst_every = args.burst_every if args.burst_every is not None else min(step_ms / 1000, 10.0)
    backlog_per_symbol = args.candles_per_symbol if args.mode == "catch-up" else args.warmup_candles
    bursts = args.bursts if args.mode == "burst" else 0
    ahead_of_clock = args.mode == "burst" and burst_every * 1000 < step_ms

    state = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    broker = None
    if args.bootstrap_servers is None:
        broker = LocalBroker(state / "kafka", port=0)
        broker.start()
    bootstrap = args.bootstrap_servers or broker.bootstrap_servers
    run_id = uuid.uuid4().hex[:8]
    candle_topic, output_topic = f"bench-candles-{run_id}", f"bench-decisions-{run_id}"
    topics.ensure_topics({"bootstrap.servers": bootstrap}, {candle_topic: args.partitions, output_topic: args.partitions})
    producer = producer_for(bootstrap, candle_topic, run_id)
    job = reader = memory = None
    metrics_port = free_port()
    try:
        markets = real_markets(args.data, args.symbols, backlog_per_symbol + bursts)
        # The backlog ends one interval before now, so live 1s bursts are on the clock.
        start_time = (int(time.time() * 1000) // step_ms - backlog_per_symbol) * step_ms
        for step in range(backlog_per_symbol):  # time-ordered, as an exchange would deliver them
            for symbol, market in markets.items():
                producer.send(candle(symbol, market.iloc[step], args.interval, start_time + step * step_ms))
        producer.close()
        backlog = args.symbols * backlog_per_symbol

        # Connected while the backlog is decided, so the first burst does not pay the producer's start-up.
        burst_producer = producer_for(bootstrap, candle_topic, run_id) if args.mode == "burst" else None
        job = start_job(args, bootstrap, candle_topic, output_topic, state, metrics_port,
                        ["--accept-future-candles"] if ahead_of_clock else [])
        memory = PeakMemory(job.pid)
        reader = DecisionReader(bootstrap, output_topic)
        reader.read_until(1, timeout=600, job=job)  # start-up done: the CPU from here on is the work's
        started_cpu, started_rows = tree_cpu_seconds_by_command(job.pid), len(reader.rows)
        wait = reader.wait_for_end_offsets if args.mode == "catch-up" else reader.read_until
        if wait(backlog, timeout=1800, job=job) < backlog:
            print(f"only {len(reader.rows)} of {backlog} backlog decisions arrived; job log: {state / 'detect.log'}")
            return 1
        results: dict[str, object] = {"mode": args.mode}
        if args.mode == "catch-up":
            rate, batches = throughput(reader.frame())
            results.update(throughput_candles_per_s=round(rate, 1), latency_ms_p50=None, latency_ms_p99=None,
                           micro_batches=batches, backlog_candles=backlog)
        else:
            results.update(burst_latencies(args, markets, burst_producer, reader, job, start_time, step_ms,
                                           backlog_per_symbol, burst_every,
                                           state / "decisions.db" if args.db == "sqlite" else None))
        cpu = tree_cpu_seconds_by_command(job.pid)
        results["job_cpu_us_per_candle"] = round(sum(cpu.values()) * 1e6 / len(reader.rows), 1)
        # After the first decision, per process name (java: the JVM; python: the driver and its Python workers).
        results["job_cpu_us_per_candle_after_start"] = {
            command: round((seconds - started_cpu[command]) * 1e6 / (len(reader.rows) - started_rows), 1)
            for command, seconds in cpu.most_common()}
        results.update(
            settings={"runner": args.runner, "members": args.members, "symbols": args.symbols, "interval": args.interval, "candles_per_symbol": backlog_per_symbol,
                      "bursts": bursts, "burst_every_s": burst_every if bursts else None,
                      "batch_size": args.batch_size, "partitions": args.partitions, "db": args.db,
                      "sinks": ["kafka", *(["sqlite"] if args.db == "sqlite" else [])], "job_args": args.job_arg,
                      "master": "local[2]" if args.runner == "detect" else None, "cores": os.cpu_count()},
            job_peak_rss_mb=round(memory.stop() / 2**20), job_peak_pss_mb=round(memory.peak_proportional_bytes / 2**20),
            state_store_bytes=state_bytes(metrics_port),
        )
        if results["state_store_bytes"]:
            results["state_bytes_per_symbol"] = round(results["state_store_bytes"] / args.symbols)
        print(json.dumps(results, indent=2))
        print(f"job log: {state / 'detect.log'}", file=sys.stderr)
        return 0
    finally:
        if memory is not None:
            memory.stop()
        if reader is not None:
            reader.close()
        if job is not None:
            job.terminate()
            job.wait(60)
        if broker is not None:
            broker.stop()


def producer_for(bootstrap: str, topic: str, run_id: str) -> CandleProducer:
    return CandleProducer({"bootstrap.servers": bootstrap}, topic, f"bench-dlq-{run_id}")


def burst_latencies(args, markets, producer: CandleProducer, reader: DecisionReader, job: subprocess.Popen,
                    start_time: int, step_ms: int, first_step: int, burst_every: float,
                    database_path: Path | None) -> dict[str, object]:
    """One candle per symbol every ``burst_every`` s; per burst, its last produce to its last decision in both
    sinks."""
    sent_at: dict[int, int] = {}
    database = DatabaseWatcher(database_path, args.symbols) if database_path else None
    began, began_ms = time.monotonic(), int(time.time() * 1000)
    for burst in range(args.bursts):
        time.sleep(max(0.0, began + burst * burst_every - time.monotonic()))
        open_time = start_time + (first_step + burst) * step_ms
        if database:
            database.awaited.append(open_time)
        for symbol, market in markets.items():
            producer.send(candle(symbol, market.iloc[first_step + burst], args.interval, open_time))
        sent_at[open_time] = int(time.time() * 1000)
    producer.close()
    expected = args.symbols * (first_step + args.bursts)
    reader.read_until(expected, timeout=120, job=job)
    in_database = {}
    if database:
        time.sleep(0.5)  # the database's last burst, if it came after the topic's
        database.stop()
        in_database = database.seen_at
    decided = reader.frame()
    live = decided[decided.open_time.isin(sent_at)]
    last_written = live.groupby("open_time")["written"].max()
    complete = live.groupby("open_time").size() == args.symbols
    bursts = [t for t in sorted(sent_at) if complete.get(t, False) and (database is None or t in in_database)]
    latency = np.array([max(last_written[t], in_database.get(t, 0)) - sent_at[t] for t in bursts], float)
    if len(latency) == 0:
        return {"bursts_complete": 0}
    return {"bursts_complete": int(len(latency)), "latency_ms_p50": float(np.percentile(latency, 50)),
            "latency_ms_p99": float(np.percentile(latency, 99)), "latency_ms_max": float(latency.max()),
            "latencies_ms": latency.astype(int).tolist(),  # per burst, in order
            # bursts whose database write ended after their last decision reached the topic
            "database_later_bursts": int(sum(in_database.get(t, 0) > last_written[t] for t in bursts)),
            "throughput_candles_per_s": round(len(live) / ((live["written"].max() - began_ms) / 1000), 1)}


if __name__ == "__main__":
    sys.exit(main())
