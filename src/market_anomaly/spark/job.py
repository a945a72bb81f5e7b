"""`market-anomaly detect`: the Spark Structured Streaming consumer.

Kafka (``crypto-candles``) -> parse with an explicit schema and validate -> per symbol,
``applyInPandasWithState`` runs the pure detection core (the same code as offline
scoring) with its state in Spark's state store -> ``foreachBatch`` marks market-wide
events (each minute counted over every batch: ``core.consensus.MarketTally``, earlier anomalies re-sent when
their mark changes) and hands decisions to the sinks, beside the next micro-batch (``handover``); invalid
records go to the dead-letter topic.

Its flags and the spark-submit entry point are in ``cli.detect``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from market_anomaly import config, metrics
from market_anomaly.candles.topic import CANDLE_FIELDS
from market_anomaly.candles.validation import (EARLIEST_OPEN_TIME, MAX_SYMBOL_LENGTH, NOT_A_CANDLE, NOT_AN_OBJECT,
                                               RAW_BYTES, REQUIRED, Limits, interval_name, raw_reason_spark,
                                               spark_reason)
from market_anomaly.lifecycle import Started, on_stop_signals
from market_anomaly.sinks import SinkOptions, Stopping
from market_anomaly.sinks.common import DECISION_RECORD
from market_anomaly.spark.handover import SPOOL, HandOver, Spool, SpooledHandOver
from market_anomaly.spark.workers import StateBounds

log = logging.getLogger("market_anomaly.detect")

# Columns the stateful step adds to every decision so one stream carries both results and rejects.
REJECT_FIELDS = (("error", "string"), ("raw", "string"))
# Minutes the market-wide tally keeps (two hours of 1m candles; about 12 MB at 2,000 symbols): live, a minute's
# closes arrive within seconds; in a backlog the partitions are read at about the same pace.
MARKET_MINUTES_KEPT = 120


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
    symbols: tuple[str, ...] = ()  # when given, only these symbols (others are dead-lettered)
    max_symbols: int = 10_000  # detector state for at most this many symbols (see StateBounds)
    symbol_expiry: float = 24 * 3600.0  # seconds of market time without a candle before a symbol is forgotten
    accept_future_candles: bool = False  # a simulated market ahead of the clock: no check against the present

    def __post_init__(self):
        if not 1 <= self.state_buckets <= self.max_symbols:
            raise ValueError(f"--max-symbols {self.max_symbols} over --state-buckets {self.state_buckets}: "
                             "each state bucket holds at least one symbol, so --state-buckets must be between 1 "
                             "and --max-symbols")

    def state_bounds(self) -> StateBounds:
        return StateBounds.spread(self.symbol_expiry, self.max_symbols, self.state_buckets)


# -- the per-symbol step (runs in Spark's Python workers) -----------------------------------------


def make_detect_step(params_path: str, output_columns: list[str], bounds: StateBounds | None = None):
    """The function ``applyInPandasWithState`` calls per state bucket and micro-batch.

    A bucket holds many symbols (see ``--state-buckets``): one Python call per bucket
    instead of per symbol keeps PySpark's fixed per-group cost from dominating a batch
    of one candle per symbol. Its state is the symbols' detection states side by side,
    bounded and decided by ``workers.decide_bucket``.
    Engines are cached per worker process and rebuilt only when the parameter file
    changes, so a live edit takes effect in the next micro-batch without a restart.
    Rejected records pass through (with ``error``/``raw``) so the driver can dead-letter them.
    """
    bounds = bounds or StateBounds()

    def step(key, frames, state):
        import pandas as pd

        from market_anomaly.spark.workers import decide_bucket, pack_states, unpack_states

        frame = pd.concat(list(frames), ignore_index=True)
        rejected = frame[frame["error"].notna()]
        candles = frame[frame["error"].isna()].drop(columns=["error", "raw", "bucket"])
        if len(candles):
            states = unpack_states(state.get[0]) if state.exists else {}
            decisions, refused = decide_bucket(candles, states, params_path, bounds,
                                               ("state bucket", frame["bucket"].iloc[0]))
            state.update((pack_states(states),))
            yield decisions.assign(error=None, raw=None).reindex(columns=output_columns)
            if refused is not None:
                yield refused.reindex(columns=output_columns)
        if len(rejected):
            yield rejected.reindex(columns=output_columns)

    return step


# -- the streaming query --------------------------------------------------------------------------


def spark_schema(fields):
    from pyspark.sql.types import StructType

    return StructType.fromDDL(", ".join(f"`{name}` {kind}" for name, kind in fields))


def decision_fields() -> list[tuple[str, str]]:
    """The stateful step's output: the decision record (``sinks.common.DECISION_RECORD``, without ``decided_at``,
    which the driver adds) in Spark DDL types, and the rejects' columns."""
    ddl = {"int64": "long", "int32": "int", "float64": "double", "bool": "boolean", "object": "string",
           "str": "string", "string": "string"}
    fields = [(name, ddl[str(dtype)]) for name, dtype in DECISION_RECORD if name != "decided_at"]
    return fields + list(REJECT_FIELDS)


def parsed_candles(spark, job: DetectConfig, interval: str):
    """The candle topic as a stream of parsed candles checked against ``job``'s limits (``interval``: the model's);
    ``job.source_options`` (``--source-option``) win."""
    from pyspark.sql import functions as F

    reader = spark.readStream.option("startingOffsets", job.starting_offsets).option("failOnDataLoss", "false")
    if job.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(job.max_offsets_per_trigger))
    for key, value in job.source_options.items():
        reader = reader.option(key, value)
    # A candle's present is when Kafka recorded it (the record's timestamp): the same on every replay. The
    # micro-batch's time would be a constant that Spark writes into the parser's generated code, so the stage
    # was compiled (and JIT-compiled) anew every micro-batch. A record without a timestamp is not checked;
    # nothing is for a simulated market (--accept-future-candles).
    recorded = F.unix_millis(F.col("timestamp"))
    present = None if job.accept_future_candles else F.when(recorded >= EARLIEST_OPEN_TIME, recorded)
    limits = Limits(interval=interval, present_ms=present, symbols=frozenset(job.symbols) if job.symbols else None)
    return kafka_candles(reader, job.topic, job.kafka, limits)


def kafka_candles(reader, topic: str, kafka_options: dict[str, str], limits: Limits):
    """``topic``'s records, parsed and checked (``parse_candles``), from ``reader`` (``spark.read`` or
    ``spark.readStream`` with its offset options set); ``kafka_options`` are the client settings (``-X``)."""
    reader = reader.format("kafka").option("subscribe", topic)
    for key, value in kafka_options.items():
        reader = reader.option(f"kafka.{key}", value)
    return parse_candles(reader.load().select("value", "timestamp"), limits)


def parse_candles(records, limits: Limits):
    """Kafka ``value`` bytes (+ ``timestamp``) -> typed candle columns, and ``error`` and ``raw`` when invalid.

    Plain Spark SQL (no Python UDF), so parsing and the checks (``candles.validation``) run in the JVM:
    a value too large or not UTF-8 is never parsed, and what reaches Python (Arrow, the state codec) is
    either a valid candle or a reject whose ``raw`` is cut to ``RAW_BYTES`` characters of valid UTF-8 and
    whose symbol is null unless it is a valid one.
    """
    from pyspark.sql import functions as F

    value = F.col("value")
    raw_problem = raw_reason_spark(value)
    text = F.when(raw_problem.isNull(), value.cast("string"))
    parsed = records.select(value, "timestamp", text.alias("text"),
                            F.from_json(text, spark_schema(CANDLE_FIELDS), {"mode": "PERMISSIVE"}).alias("c"))
    columns = {name: F.col(f"c.{name}") for name, _ in CANDLE_FIELDS}
    columns["symbol"] = F.upper(columns["symbol"])
    nothing_parsed = F.col("c").isNull() | functools.reduce(
        lambda left, right: left & right, [columns[name].isNull() for name in REQUIRED])
    error = F.coalesce(
        raw_problem,
        F.when(~F.ltrim(F.col("text")).startswith("{"), F.lit(NOT_AN_OBJECT))
        .when(nothing_parsed, F.lit(NOT_A_CANDLE)),
        spark_reason(columns, limits),
    )
    symbol_ok = F.coalesce(F.length(columns["symbol"]) <= MAX_SYMBOL_LENGTH, F.lit(False))
    return parsed.select(
        F.when(error.isNull() | symbol_ok, columns["symbol"]).alias("symbol"),
        F.coalesce(columns["interval"], F.lit(limits.interval or "1m")).alias("interval"),
        *[columns[name].alias(name) for name, _ in CANDLE_FIELDS if name not in ("symbol", "interval", "produced_at")],
        F.coalesce(columns["produced_at"], F.unix_millis(F.col("timestamp"))).alias("produced_at"),
        error.alias("error"),
        F.when(error.isNotNull(), F.substring(F.make_valid_utf8(value.cast("string")), 1, RAW_BYTES)).alias("raw"),
    )


class BatchHandler:
    """A batch's market-wide marking (``prepare``), then its dead letters, sinks and progress line (``deliver``),
    for both runners (``detect`` through ``handover.SpooledHandOver``, ``decide`` in its sinks' thread).

    The delivery contract (``sinks``): ``Sinks.write`` returns only once the durable sinks have the batch,
    retrying them with back-off inside this call, so the runner counts the batch as done after that and
    keeps running through an outage (retrying here instead of failing costs no re-reading or re-detection,
    and prints and alerts nothing twice). A job stopped meanwhile has the batch still to deliver at its next
    start (``detect``: from its spool; ``decide``: read again).
    """

    def __init__(self, sinks, dead_letters, params_path: str):
        from market_anomaly.core.consensus import MarketTally
        from market_anomaly.spark.workers import params_for

        self.sinks = sinks
        self.dead_letters = dead_letters
        self.params_path = params_path
        self.totals = {"candles": 0, "anomalies": 0, "rejected": 0, "market_corrections": 0}
        # A minute's closes can span batches: the market-wide mark counts each minute over all of them, and over
        # other decide members' symbols (``merge_minute``) when they share their counts (``shared``).
        self.tally = MarketTally(params_for(params_path).market, keep_minutes=MARKET_MINUTES_KEPT)
        self.tally_lock = threading.Lock()
        self.late_corrections: list = []  # from other members' counts, sent with the next batch
        self.shared = None  # a ``decider.market.SharedTally``: told each batch's counts

    def hand_over(self, decisions, rejected, batch_id: int, detection_seconds: float) -> None:
        """A batch's decisions and its rejects (``symbol``, ``error``, ``raw``) to the sinks and the dead letters;
        returns once the durable sinks and the dead-letter topic have them."""
        self.deliver(self.prepare(decisions, rejected, batch_id, detection_seconds))

    def prepare(self, decisions, rejected, batch_id: int, detection_seconds: float) -> HandOver:
        """The batch's market-wide marks, and the corrections they make to earlier batches' anomalies (batches are
        prepared in their order); the counts are shared with the other members."""
        import pandas as pd

        from market_anomaly.spark.workers import params_for

        with self.tally_lock:
            self.tally.params = params_for(self.params_path).market
            decisions, corrections = self.tally.mark(decisions.reset_index(drop=True))
            parts = [frame for frame in (*self.late_corrections, corrections) if len(frame)]
            self.late_corrections = []
        # A key re-marked twice since the last batch: its newest mark.
        corrections = decisions.iloc[:0] if not parts else pd.concat(parts, ignore_index=True).drop_duplicates(
            ["symbol", "interval", "open_time"], keep="last")
        if self.shared is not None:
            self.shared.publish(decisions)
        given = (decisions if not len(corrections) else corrections.reset_index(drop=True) if decisions.empty
                 else pd.concat([decisions, corrections], ignore_index=True))
        given["decided_at"] = int(time.time() * 1000)
        return HandOver(batch_id, given, rejected, candles=len(decisions),
                        anomalies=int(decisions["is_anomaly"].sum()), corrections=len(corrections),
                        detection_seconds=detection_seconds)

    def deliver(self, batch: HandOver) -> None:
        """A prepared batch to the dead-letter topic and the sinks; returns once the durable ones have it."""
        started = time.monotonic()
        for row in batch.rejected.itertuples():
            self.dead_letters.publish(row.raw, row.error, key=row.symbol if isinstance(row.symbol, str) else None)
        self.dead_letters.flush()
        self.sinks.write(batch.given)
        self.totals["candles"] += batch.candles
        self.totals["anomalies"] += batch.anomalies
        self.totals["rejected"] += len(batch.rejected)
        self.totals["market_corrections"] += batch.corrections
        metrics.record_decisions(batch.given.iloc[:batch.candles])
        log.info("batch %d: %d candles, %d anomalies, %d rejected%s; detection %.2fs, sinks %.2fs (%s) (totals %s)",
                 batch.batch_id, batch.candles, batch.anomalies, len(batch.rejected),
                 f", {batch.corrections} earlier anomalies' market-wide mark corrected" if batch.corrections else "",
                 batch.detection_seconds, time.monotonic() - started,
                 ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.sinks.seconds.items()), self.totals)

    def merge_minute(self, interval: str, open_time: int, decided, anomalous) -> None:
        """Another member's symbols of a minute (``MarketTally.merge``): the corrections go with the next batch."""
        with self.tally_lock:
            corrections = self.tally.merge(interval, open_time, decided, anomalous)
            if len(corrections):
                self.late_corrections.append(corrections)


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
            # Spark's own split of the batch: queryPlanning, getBatch, addBatch (this job's foreachBatch), ...
            log.info("batch %d Spark timings (ms): %s", progress.batchId, progress.durationMs)
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


def run(config: DetectConfig) -> int:
    """Run the stream until a signal, ``config.run_for`` or a failure; 0 when it stopped cleanly, 2 when the
    parameter file is unusable (checked before Spark starts)."""
    from market_anomaly.core import InvalidParams

    try:
        job = DetectJob(config)
    except (InvalidParams, ValueError) as error:
        log.error("%s", error)
        return 2
    with job:
        return 0 if job.wait() else 1


class DetectJob(Started):
    """The running stream and everything it owns: the Spark session, the sinks, the dead-letter publisher,
    the progress listener and the query.

    ``DetectJob(config)`` checks the parameter file (``InvalidParams``/``ValueError`` before any Spark
    start); ``start()`` builds the rest and starts the query; ``wait()`` blocks until a signal,
    ``config.run_for`` or a failure; ``close()`` lets the running micro-batch finish, then stops the query
    and releases the parts in reverse order. As a context manager, ``with DetectJob(config) as job:``
    starts it and always closes it.
    """

    def __init__(self, config: DetectConfig):
        from market_anomaly.spark.workers import params_for

        self.config = config
        self.params_path = str(Path(config.params).resolve())
        self.interval = interval_name(params_for(self.params_path).interval_ms)  # fails fast on a bad file
        self.spark = None
        self.sinks = None
        self.dead_letters = None
        self.handover = None
        self.query = None

    def start(self) -> "DetectJob":
        from market_anomaly.kafka.dead_letter import DeadLetterPublisher
        from market_anomaly.sinks import build_sinks
        from market_anomaly.spark.session import build_session

        config = self.config
        self.spark = build_session("market-anomaly-detect", config.master, config.spark_conf)
        self.sinks = build_sinks(config.sinks)
        self.dead_letters = DeadLetterPublisher(config.kafka, config.dead_letter_topic, stage="consumer")
        self.spark.streams.addListener(progress_listener(self.sinks))
        self.handover = SpooledHandOver(BatchHandler(self.sinks, self.dead_letters, self.params_path),
                                        Spool(Path(config.checkpoint_dir) / SPOOL),
                                        tuple(name for name, _ in REJECT_FIELDS))
        self.query = (
            self.decisions().writeStream.foreachBatch(self.handover)
            .option("checkpointLocation", str(config.checkpoint_dir))
            .trigger(processingTime=config.trigger)
            .queryName("market-anomaly-detect")
            .start()
        )
        log.info("detect: reading %s from %s; checkpoint %s; params %s",
                 config.topic, config.kafka.get("bootstrap.servers"), config.checkpoint_dir, self.params_path)
        return self

    def decisions(self):
        """The stream of decisions and rejects: parsed candles, hashed into state buckets, through the
        stateful per-bucket step (``make_detect_step``)."""
        from pyspark.sql import functions as F

        config = self.config
        output_fields = decision_fields()
        bucketed = parsed_candles(self.spark, config, self.interval).withColumn(
            "bucket", F.pmod(F.xxhash64("symbol"), F.lit(config.state_buckets)))
        return bucketed.groupBy("bucket").applyInPandasWithState(
            make_detect_step(self.params_path, [name for name, _ in output_fields], config.state_bounds()),
            outputStructType=spark_schema(output_fields),
            stateStructType=spark_schema([("blob", "binary")]),
            outputMode="append",
            timeoutConf="NoTimeout",
        )

    def wait(self) -> bool:
        """Block until the stream stops; False when the query failed."""
        return wait_until_stopped(self.query, self.config.run_for, on_stop=self.sinks.stop_retrying)

    def close(self) -> None:
        if self.query is not None:
            finish_batch(self.query, STOP_GRACE_SECONDS)
            self.query.stop()
        if self.handover is not None:
            self.handover.close()
        if self.sinks is not None:
            self.sinks.close()
        if self.dead_letters is not None:
            self.dead_letters.flush()
        if self.spark is not None:
            self.spark.stop()
        self.query = self.handover = self.sinks = self.dead_letters = self.spark = None


def wait_until_stopped(query, run_for: float | None, on_stop=lambda: None) -> bool:
    """Block until Ctrl-C, SIGTERM (from `up`, systemd, kill), ``run_for`` seconds, or the query fails (-> False);
    then ``on_stop()`` (a durable sink's retries give up: the batch it was delivering stays in the spool).

    Signals only set a flag: raising inside a blocking py4j call would tear the gateway
    connection and print a traceback instead of stopping cleanly.
    """
    stop = threading.Event()
    on_stop_signals(stop.set)
    deadline = time.monotonic() + run_for if run_for else None
    while not stop.is_set() and query.isActive and (deadline is None or time.monotonic() < deadline):
        query.awaitTermination(0.5)
    if stop.is_set():
        log.info("detect: stopping")
    on_stop()
    failure = query.exception()
    if failure is not None and Stopping.__name__ in str(failure):
        log.warning("detect: stopped while a durable sink was failing; the next start delivers the batch it was "
                    "delivering (from the spool) and replays the one after")
        return True
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
