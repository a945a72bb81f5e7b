"""`market-anomaly detect`: the Spark Structured Streaming consumer.

Kafka (``crypto-candles``) -> parse with an explicit schema and validate -> per symbol,
``applyInPandasWithState`` runs the pure detection core (the same code as offline
scoring) with its state in Spark's state store -> ``foreachBatch`` marks market-wide
events and hands decisions to the sinks; invalid records go to the dead-letter topic.

Its flags and the spark-submit entry point are in ``cli.detect``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from market_anomaly import config, metrics
from market_anomaly.sinks import SinkOptions

log = logging.getLogger("market_anomaly.detect")

REQUIRED_FIELDS = ("symbol", "open_time", "close_time", "open", "high", "low", "close", "volume")
CANDLE_FIELDS = (
    ("symbol", "string"), ("interval", "string"), ("open_time", "long"), ("close_time", "long"),
    ("open", "double"), ("high", "double"), ("low", "double"), ("close", "double"), ("volume", "double"),
    ("quote_volume", "double"), ("trades", "long"), ("taker_buy_base", "double"), ("taker_buy_quote", "double"),
    ("event_time", "long"), ("source", "string"), ("produced_at", "long"),
)
# Columns the stateful step adds to every decision so one stream carries both results and rejects.
REJECT_FIELDS = (("error", "string"), ("raw", "string"))
# Candle columns carried next to each decision (for the dashboard's candlesticks).
CANDLE_PASSTHROUGH = ("open", "high", "low")


@dataclass(frozen=True)
class DetectConfig:
    """Everything the stream needs, built once by the command line (``cli.detect``)."""

    kafka: dict[str, str]  # client settings: bootstrap.servers and -X pairs
    params: Path
    checkpoint_dir: Path
    sinks: SinkOptions
    topic: str = config.CANDLES_TOPIC
    dead_letter_topic: str = config.DEAD_LETTER_TOPIC
    starting_offsets: str = "earliest"
    trigger: str = "0 seconds"
    max_offsets_per_trigger: int | None = None
    source_options: dict[str, str] = field(default_factory=dict)  # --source-option, win over the job's own
    master: str = "local[2]"
    spark_conf: dict[str, str] = field(default_factory=dict)
    state_buckets: int = 16
    run_for: float | None = None  # seconds; None: until a signal


# -- the per-symbol step (runs in Spark's Python workers) -----------------------------------------


def make_detect_step(params_path: str, output_columns: list[str]):
    """The function ``applyInPandasWithState`` calls per state bucket and micro-batch.

    A bucket holds many symbols (see ``--state-buckets``): one Python call per bucket
    instead of per symbol keeps PySpark's fixed per-group cost from dominating a batch
    of one candle per symbol. Its state is the symbols' detection states side by side.
    Engines are cached per worker process and rebuilt only when the parameter file
    changes, so a live edit takes effect in the next micro-batch without a restart.
    Rejected records pass through (with ``error``/``raw``) so the driver can dead-letter them.
    """

    def step(key, frames, state):
        import pandas as pd

        from market_anomaly.spark.workers import engine_for, pack_states, unpack_states

        frame = pd.concat(list(frames), ignore_index=True)
        rejected = frame[frame["error"].notna()]
        candles = frame[frame["error"].isna()].drop(columns=["error", "raw", "bucket"])
        if len(candles):
            states = unpack_states(state.get[0]) if state.exists else {}
            decided = engine_for(params_path).decide_bucket(candles, states)  # all the bucket's symbols at once
            states.update(decided.states)
            state.update((pack_states(states),))
            for name in CANDLE_PASSTHROUGH:  # the dashboard draws candlesticks
                decided.columns[name] = candles[name].to_numpy(float)[decided.rows]
            decisions = decided.frame(CANDLE_PASSTHROUGH)
            yield decisions.assign(error=None, raw=None).reindex(columns=output_columns)
        if len(rejected):
            yield rejected.reindex(columns=output_columns)

    return step


# -- the streaming query --------------------------------------------------------------------------


def spark_schema(fields):
    from pyspark.sql.types import StructType

    return StructType.fromDDL(", ".join(f"`{name}` {kind}" for name, kind in fields))


def decision_fields() -> list[tuple[str, str]]:
    """The stateful step's output: the core's decision schema in Spark DDL types, the candle's OHLC, rejects."""
    from market_anomaly.core import DECISION_SCHEMA

    ddl = {"int64": "long", "int32": "int", "float64": "double", "bool": "boolean", "object": "string",
           "str": "string", "string": "string"}
    fields = [(name, ddl[str(dtype)]) for name, dtype in DECISION_SCHEMA]
    return fields + [(name, "double") for name in CANDLE_PASSTHROUGH] + list(REJECT_FIELDS)


def parsed_candles(spark, job: DetectConfig):
    """The candle topic as a stream of parsed candles; ``job.source_options`` (``--source-option``) win."""
    reader = spark.readStream.option("startingOffsets", job.starting_offsets).option("failOnDataLoss", "false")
    if job.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(job.max_offsets_per_trigger))
    for key, value in job.source_options.items():
        reader = reader.option(key, value)
    return kafka_candles(reader, job.topic, job.kafka)


def kafka_candles(reader, topic: str, kafka_options: dict[str, str]):
    """``topic``'s records, parsed (``parse_candles``), from ``reader`` (``spark.read`` or ``spark.readStream``
    with its offset options set); ``kafka_options`` are the client settings (``-X``)."""
    from pyspark.sql import functions as F

    reader = reader.format("kafka").option("subscribe", topic)
    for key, value in kafka_options.items():
        reader = reader.option(f"kafka.{key}", value)
    return parse_candles(reader.load().select(F.col("value").cast("string").alias("raw"), F.col("timestamp")))


def parse_candles(records):
    """``raw`` JSON strings (+ Kafka ``timestamp``) -> typed candle columns, ``error`` and ``raw`` when invalid.

    Plain Spark SQL (no Python UDF), so parsing and validation run in the JVM.
    """
    from pyspark.sql import functions as F

    c = F.from_json("raw", spark_schema(CANDLE_FIELDS), {"mode": "PERMISSIVE"}).alias("c")
    parsed = records.select("raw", "timestamp", c)
    missing = F.concat_ws(", ", *[F.when(F.col(f"c.{name}").isNull(), F.lit(name)) for name in REQUIRED_FIELDS])
    col = lambda name: F.col(f"c.{name}")  # noqa: E731 - brevity in the checks below
    error = (
        F.when(F.col("c").isNull() | (missing == ", ".join(REQUIRED_FIELDS)), F.lit("not a candle JSON object"))
        .when(missing != "", F.concat(F.lit("missing or non-numeric fields: "), missing))
        .when(F.trim(col("symbol")) == "", F.lit("empty symbol"))
        .when(F.isnan(col("open")) | F.isnan(col("high")) | F.isnan(col("low")) | F.isnan(col("close"))
              | F.isnan(col("volume")), F.lit("NaN price or volume"))
        .when(col("low") <= 0, F.lit("non-positive price"))
        .when(col("high") < F.greatest(col("open"), col("close"), col("low")), F.lit("high below open/close/low"))
        .when(col("low") > F.least(col("open"), col("close")), F.lit("low above open/close"))
        .when(col("volume") < 0, F.lit("negative volume"))
        .when(col("close_time") <= col("open_time"), F.lit("close_time not after open_time"))
    )
    return parsed.select(
        F.upper(col("symbol")).alias("symbol"),
        F.coalesce(col("interval"), F.lit("1m")).alias("interval"),
        *[col(name).alias(name) for name, _ in CANDLE_FIELDS if name not in ("symbol", "interval", "produced_at")],
        F.coalesce(col("produced_at"), (F.col("timestamp").cast("double") * 1000).cast("long")).alias("produced_at"),
        error.alias("error"),
        F.when(error.isNotNull(), F.col("raw")).alias("raw"),
    )


class BatchHandler:
    """``foreachBatch``: market-wide marking, sinks, dead letters, one progress line per batch."""

    def __init__(self, sinks, dead_letters, params_path: str):
        self.sinks = sinks
        self.dead_letters = dead_letters
        self.params_path = params_path
        self.totals = {"candles": 0, "anomalies": 0, "rejected": 0}

    def __call__(self, batch_df, batch_id: int) -> None:
        from market_anomaly.core import mark_market_events
        from market_anomaly.spark.workers import params_for

        started = time.monotonic()
        frame = batch_df.toPandas()  # runs the micro-batch: Kafka read, parsing, the per-symbol detection
        if frame.empty:
            return
        detected = time.monotonic()
        rejected = frame[frame["error"].notna()]
        decisions = frame[frame["error"].isna()].drop(columns=[name for name, _ in REJECT_FIELDS])
        decisions = mark_market_events(decisions, params_for(self.params_path))
        decisions["decided_at"] = int(time.time() * 1000)
        self.sinks.write(decisions.reset_index(drop=True))
        for row in rejected.itertuples():
            self.dead_letters.publish(row.raw, row.error, key=row.symbol if isinstance(row.symbol, str) else None)
        self.dead_letters.flush()
        anomalies = int(decisions["is_anomaly"].sum())
        self.totals["candles"] += len(decisions)
        self.totals["anomalies"] += anomalies
        self.totals["rejected"] += len(rejected)
        metrics.record_decisions(decisions)
        log.info("batch %d: %d candles, %d anomalies, %d rejected; detection %.2fs, sinks %.2fs (totals %s)",
                 batch_id, len(decisions), anomalies, len(rejected), detected - started, time.monotonic() - detected,
                 self.totals)


def progress_listener(sinks):
    """Feeds Spark's per-batch progress (rates, Kafka end offsets) to the sinks' health record."""
    from pyspark.sql.streaming import StreamingQueryListener

    class HealthListener(StreamingQueryListener):
        def onQueryStarted(self, event):
            pass

        def onQueryProgress(self, event):
            progress = event.progress
            metrics.record_progress(progress)
            partitions: dict[str, dict[str, int]] = {}
            for source in progress.sources:
                try:
                    end = json.loads(source.endOffset) if source.endOffset else {}
                except (TypeError, ValueError):
                    continue
                for topic, offsets in end.items():
                    for partition, offset in offsets.items():
                        partitions[f"{topic}:{partition}"] = {"end_offset": int(offset)}
            log.debug("batch %d timings (ms): %s", progress.batchId, progress.durationMs)
            sinks.record_health({
                "batch_id": progress.batchId,
                "input_rows": progress.numInputRows,
                "processed_rows_per_second": progress.processedRowsPerSecond,
                "batch_duration_ms": progress.batchDuration,
                "partitions": partitions,
                "at": int(time.time() * 1000),
            })

        def onQueryIdle(self, event):
            pass

        def onQueryTerminated(self, event):
            pass

    return HealthListener()


def run(job: DetectConfig) -> int:
    """Run the stream until a signal, ``job.run_for`` or a failure; 0 when it stopped cleanly."""
    from pyspark.sql import functions as F

    from market_anomaly.core import InvalidParams
    from market_anomaly.kafka.dead_letter import DeadLetterPublisher
    from market_anomaly.sinks import build_sinks
    from market_anomaly.spark.session import build_session
    from market_anomaly.spark.workers import params_for

    params_path = str(Path(job.params).resolve())
    try:
        params_for(params_path)  # fail fast, before Spark starts, on a missing or malformed file
    except InvalidParams as error:
        log.error("%s", error)
        return 2
    spark = build_session("market-anomaly-detect", job.master, job.spark_conf)
    sinks = build_sinks(job.sinks)
    dead_letters = None
    query = None
    healthy = False
    try:
        dead_letters = DeadLetterPublisher(job.kafka, job.dead_letter_topic, stage="consumer")
        spark.streams.addListener(progress_listener(sinks))
        candles = parsed_candles(spark, job)
        output_fields = decision_fields()
        bucketed = candles.withColumn("bucket", F.pmod(F.xxhash64("symbol"), F.lit(job.state_buckets)))
        decisions = bucketed.groupBy("bucket").applyInPandasWithState(
            make_detect_step(params_path, [name for name, _ in output_fields]),
            outputStructType=spark_schema(output_fields),
            stateStructType=spark_schema([("blob", "binary")]),
            outputMode="append",
            timeoutConf="NoTimeout",
        )
        query = (
            decisions.writeStream.foreachBatch(BatchHandler(sinks, dead_letters, params_path))
            .option("checkpointLocation", str(job.checkpoint_dir))
            .trigger(processingTime=job.trigger)
            .queryName("market-anomaly-detect")
            .start()
        )
        log.info("detect: reading %s from %s; checkpoint %s; params %s",
                 job.topic, job.kafka.get("bootstrap.servers"), job.checkpoint_dir, params_path)
        healthy = wait_until_stopped(query, job.run_for)
    finally:
        if query is not None:
            finish_batch(query, STOP_GRACE_SECONDS)
            query.stop()
        sinks.close()
        if dead_letters is not None:
            dead_letters.flush()
        spark.stop()
    return 0 if healthy else 1


def wait_until_stopped(query, run_for: float | None) -> bool:
    """Block until Ctrl-C, SIGTERM (from `up`, systemd, kill), ``run_for`` seconds, or the query fails (-> False).

    Signals only set a flag: raising inside a blocking py4j call would tear the gateway
    connection and print a traceback instead of stopping cleanly.
    """
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    deadline = time.monotonic() + run_for if run_for else None
    while not stop.is_set() and query.isActive and (deadline is None or time.monotonic() < deadline):
        query.awaitTermination(0.5)
    if stop.is_set():
        log.info("detect: stopping")
    failure = query.exception()
    if failure is not None:
        log.error("detect: the streaming query failed: %s", failure)
    return failure is None


STOP_GRACE_SECONDS = 20.0  # `up` gives the job 60 s after SIGTERM


def finish_batch(query, timeout: float) -> None:
    """Let a running micro-batch finish before ``query.stop()``, which would cancel it mid-way (the batch is
    re-run after a restart, so nothing is lost, but its cancellation fills the log with a Spark traceback)."""
    deadline = time.monotonic() + timeout
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.1)
