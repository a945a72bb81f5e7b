"""`market-anomaly train --spark`: training as a Spark batch job, for candle history too large for one process.

The same ``training.train.train`` runs; only its series collection differs. ``SparkSeries``
keeps the candles in a Spark DataFrame, partitioned by series and cached on the executors,
and runs each training pass there as one ``applyInPandas`` per series. Only the pass's
compact arrays (per-candle scores, float64, serialized as ``.npz``) come back to the
driver, so a Spark run gives exactly the parameters a local run gives on the same candles.

Reading follows ``candles.files``: CSV (with a header) or Parquet files (by
extension; globs and directories of one layout allowed, Hadoop URIs too), ``symbol`` from
its column or the file name, time from ``open_time``/``open_time_ms``/``timestamp`` (epoch
ms or ISO text, UTC when it has no zone; a row without a readable time is an error). Rows
with missing or non-positive prices or negative volume are skipped, and counted in a
warning. A duplicate candle (same series and ``open_time``) is dropped, the first in file
order kept, and counted. A symbol found in several files keys its later series
``SYMBOL@file-stem``. With ``--topic``: every record now in the topic, parsed and
validated as the stream does (``job.parse_candles``); rejected records are counted and
logged, and of duplicates the earliest produced is kept.

Its spark-submit entry point is ``cli/train.py``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections import defaultdict
from pathlib import PurePosixPath
from urllib.parse import unquote

import numpy as np
import pandas as pd

from market_anomaly.candles.files import PRICE_COLUMNS, SYMBOL_IN_NAME, CandleFileError
from market_anomaly.training.train import TRAINING_OPTIONAL, Arrays, SeriesPass, ordered_series, series_span

log = logging.getLogger("market_anomaly.train")

# A batch job: adaptive execution back on, no cap on what the passes return to the driver
# (the session's defaults are the streaming job's). Shuffle partitions: see ``spark_series``.
# The driver fits the model on every pass's arrays (~80 bytes a candle): a larger heap than the stream's.
BATCH_CONF = {"spark.sql.adaptive.enabled": "true", "spark.driver.maxResultSize": "0", "spark.driver.memory": "2g"}
GROUP = ("source", "file", "symbol")  # input argument (by position), file, symbol: one series
ORDER = ("order_major", "order_minor")  # of two candles with one open_time, the lower order is the first
RESULT_SCHEMA = "series string, part int, npz binary"
RESULT_PART_BYTES = 64 << 20  # a pass's arrays travel in pieces far below the JVM's 2 GB array limit
BAD_TIME = "no open time (epoch ms or ISO text)"
BAD_PRICES = "missing or non-positive prices/volume"


class SparkSeries:
    """``training.train``'s series collection over a cached Spark DataFrame of candles.

    ``candles`` has the ``GROUP`` columns, ``open_time``, the prices, ``ORDER``, ``error`` (null for
    a usable candle) and ``bucket`` (its partitioning); ``names`` maps each group to its series key and ``spans``
    gives each key's ``trained_on`` entry, in key order.
    """

    def __init__(self, candles, names: dict[tuple, str], spans: dict[str, dict]):
        self.candles, self.names, self._spans = candles, names, spans

    def keys(self) -> list[str]:
        return list(self._spans)

    def lengths(self) -> dict[str, int]:
        return {key: span["candles"] for key, span in self._spans.items()}

    def spans(self) -> dict[str, dict]:
        return dict(self._spans)

    def map(self, function: SeriesPass, *args) -> dict[str, Arrays]:
        """``function(key, frame, *args)`` on the executors, one call per series; results by key in ``keys()`` order."""
        names = self.names  # the closure Spark ships must not hold this object (it holds a DataFrame)

        def run(group: tuple, frame: pd.DataFrame) -> pd.DataFrame:
            key = names[tuple(group)[1:]]  # after the bucket
            ordered = ordered_series(frame.sort_values(["open_time", *ORDER]))
            return _serialized(key, function(key, ordered, *args))

        usable = self.candles.filter(self.candles["error"].isNull())
        parts = defaultdict(list)
        for row in usable.groupBy("bucket", *GROUP).applyInPandas(run, RESULT_SCHEMA).collect():
            parts[row.series].append((row.part, row.npz))
        return {key: _arrays(parts.pop(key)) for key in self.keys()}


def _serialized(key: str, arrays: Arrays) -> pd.DataFrame:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    pieces = [data[start:start + RESULT_PART_BYTES] for start in range(0, len(data), RESULT_PART_BYTES)]
    return pd.DataFrame({"series": key, "part": np.arange(len(pieces), dtype=np.int32), "npz": pieces})


def _arrays(parts: list[tuple[int, bytes]]) -> Arrays:
    with np.load(io.BytesIO(b"".join(bytes(piece) for _, piece in sorted(parts))), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


# -- reading --------------------------------------------------------------------------------------


def file_candles(spark, paths: list[str]):
    """The candles of ``paths`` (in that order) as the ``SparkSeries`` columns, not yet grouped."""
    return functools.reduce(lambda left, right: left.unionByName(right),
                            [_one_input(spark, path, source) for source, path in enumerate(paths)])


def _one_input(spark, path: str, source: int):
    from pyspark.sql import functions as F

    parquet = path.rstrip("/").lower().endswith((".parquet", ".pq"))
    # CSV columns stay text (no schema inference: one pass less) and are cast below, as the local reader coerces.
    # Every file's header is checked against the first's: a glob over two layouts is an error, not columns read
    # by position into the wrong names.
    raw = (spark.read.parquet(path) if parquet
           else spark.read.option("header", True).option("enforceSchema", False).csv(path))
    missing = [name for name in PRICE_COLUMNS if name not in raw.columns]
    if missing:
        raise CandleFileError(f"{path}: missing columns {', '.join(missing)}")
    if "symbol" in raw.columns:
        symbol = F.upper(F.col("symbol").cast("string"))
    else:
        for file in raw.inputFiles():
            if not SYMBOL_IN_NAME.match(_file_name(file)):
                raise CandleFileError(f"{file}: no symbol column and the file name does not start with a symbol")
        # Names come URL-encoded; an escape cannot occur in the part the pattern matches.
        symbol = F.upper(F.regexp_extract(F.col("_metadata.file_name"), SYMBOL_IN_NAME.pattern, 1))
    prices = {name: F.col(name).try_cast("double") for name in PRICE_COLUMNS}
    open_time = _open_time(raw, path)
    optional = [(F.col(name).try_cast("double") if name in raw.columns else F.lit(None).cast("double")).alias(name)
                for name in TRAINING_OPTIONAL]  # null where the file has no such column, as NaN offline
    return raw.select(
        F.lit(source).alias("source"), F.col("_metadata.file_path").alias("file"), symbol.alias("symbol"),
        open_time.alias("open_time"), *[value.alias(name) for name, value in prices.items()], *optional,
        # File order: a split of a file is one task, read in order.
        F.col("_metadata.file_block_start").alias("order_major"), F.monotonically_increasing_id().alias("order_minor"),
        F.when(open_time.isNull(), F.lit(BAD_TIME)).when(~_usable_prices(prices), F.lit(BAD_PRICES))
        .when(symbol.isNull() | (symbol == ""), F.lit("no symbol")).alias("error"),
    )


def _open_time(raw, path: str):
    """Epoch ms from the first time column present (``candle_files`` rules), null where unreadable."""
    from pyspark.sql import functions as F

    kinds = dict(raw.dtypes)
    name = next((name for name in ("open_time", "open_time_ms", "timestamp") if name in kinds), None)
    if name is None:
        raise CandleFileError(f"{path}: needs an open_time (ms) or timestamp column")
    column = F.col(name)
    epoch_ms = F.coalesce(column.try_cast("long"), column.try_cast("double").try_cast("long"))
    if name != "timestamp" or kinds[name] not in ("string", "timestamp", "timestamp_ntz"):
        return epoch_ms
    if kinds[name] != "string":
        return F.unix_millis(column.cast("timestamp"))  # a zone-less timestamp is UTC (the session's zone)
    return F.when(column.rlike(r"^\s*-?\d+\s*$"), epoch_ms).otherwise(F.unix_millis(F.try_to_timestamp(column)))


def _usable_prices(prices: dict):
    """Finite positive prices and finite non-negative volume (false, not null, where a value is missing)."""
    from pyspark.sql import functions as F

    infinity = float("inf")
    checks = [(prices[name] > 0) & (prices[name] < infinity) for name in PRICE_COLUMNS if name != "volume"]
    checks.append((prices["volume"] >= 0) & (prices["volume"] < infinity))  # NaN sorts above infinity: excluded
    return F.coalesce(functools.reduce(lambda left, right: left & right, checks), F.lit(False))


def topic_candles(spark, topic: str, kafka_options: dict[str, str]):
    """Every record now in ``topic``, parsed as the stream parses it, as the ``SparkSeries`` columns."""
    from pyspark.sql import functions as F

    from market_anomaly.candles.validation import Limits
    from market_anomaly.spark.job import kafka_candles

    reader = spark.read.option("startingOffsets", "earliest").option("endingOffsets", "latest")
    limits = Limits(interval=None, present_ms=F.unix_millis(F.current_timestamp()))  # history of any interval
    return kafka_candles(reader, topic, kafka_options, limits).select(
        F.lit(0).alias("source"), F.lit(f"topic {topic}").alias("file"), "symbol", "open_time", *PRICE_COLUMNS,
        *[F.col(name).cast("double").alias(name) for name in TRAINING_OPTIONAL],
        F.col("produced_at").alias("order_major"), F.lit(0).cast("long").alias("order_minor"), "error")


def spark_series(spark, candles, partitions: int) -> SparkSeries:
    """Group ``candles`` into series (keys as ``candle_files.series_by_symbol`` gives them), cache them, and log
    what was skipped: one Spark job over the input; the driver gets one row per series."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # Partitioned by series once, so every pass is one stage without a shuffle. By a hash column: partitioning by
    # GROUP itself would not be reused when a group column is a constant (one input), which Spark folds into it.
    cached = (candles.withColumn("bucket", F.xxhash64(*GROUP)).repartition(partitions, "bucket")
              .persist(StorageLevel.MEMORY_AND_DISK))
    usable = F.col("error").isNull()
    groups = cached.groupBy(*GROUP).agg(
        F.count_if(~usable).alias("skipped"), F.collect_set("error").alias("reasons"),
        F.count_if(usable).alias("usable"), F.count_distinct(F.when(usable, F.col("open_time"))).alias("candles"),
        F.min(F.when(usable, F.col("open_time"))).alias("first"),
        F.max(F.when(usable, F.col("open_time"))).alias("last"),
    ).collect()
    skipped, reasons = defaultdict(int), defaultdict(set)  # by file
    names, spans = {}, {}
    for row in sorted(groups, key=lambda row: (row.source, row.file, row.symbol or "")):
        if BAD_TIME in row.reasons:
            raise CandleFileError(f"{row.file}: rows without a readable time (epoch ms or ISO text)")
        skipped[row.file] += row.skipped
        reasons[row.file].update(row.reasons)
        if row.candles:
            key = row.symbol if row.symbol not in spans else f"{row.symbol}@{PurePosixPath(_file_name(row.file)).stem}"
            names[(row.source, row.file, row.symbol)] = key
            spans[key] = series_span(row.candles, row.first, row.last)
    for file, count in skipped.items():
        if count:
            log.warning("%s: %d rows skipped (%s)", file, count, "; ".join(sorted(reasons[file])))
    duplicates = sum(row.usable - row.candles for row in groups)
    if duplicates:
        log.warning("%d duplicate candles (same series and open_time) dropped, the first of each kept", duplicates)
    log.info("train --spark: %d series, %d candles, in %d partitions", len(spans),
             sum(span["candles"] for span in spans.values()), partitions)
    return SparkSeries(cached, names, spans)


def _file_name(uri: str) -> str:
    return unquote(uri.rstrip("/").rsplit("/", 1)[-1])


# -- the command ----------------------------------------------------------------------------------


@contextlib.contextmanager
def training_series(master: str, conf: dict[str, str], inputs: list[str] | None = None, topic: str | None = None,
                    kafka: dict[str, str] | None = None):
    """A Spark session for ``train --spark`` and the series of ``inputs`` (files, globs, URIs) or of ``topic``
    (read with the client settings ``kafka``); the session stops after."""
    from market_anomaly.spark.session import build_session, submitted_conf

    spark = build_session("market-anomaly-train", master, conf, defaults=BATCH_CONF)
    try:
        if "spark.sql.shuffle.partitions" not in {**submitted_conf(), **conf}:
            # Two series groups per core, to balance uneven series.
            spark.conf.set("spark.sql.shuffle.partitions", str(2 * spark.sparkContext.defaultParallelism))
        candles = topic_candles(spark, topic, kafka or {}) if topic else file_candles(spark, inputs)
        yield spark_series(spark, candles, int(spark.conf.get("spark.sql.shuffle.partitions")))
    finally:
        spark.stop()
