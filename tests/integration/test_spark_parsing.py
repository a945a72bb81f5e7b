"""The Spark job's parsing and validation (real Spark session): every record is a candle or has a reason."""

from __future__ import annotations

from pathlib import Path

import json

import pytest
from support import GOOD, INVALID, NOW_MS, variant

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark():
    from market_anomaly.spark.session import build_session

    session = build_session("test-parsing", "local[1]")
    yield session
    session.stop()


def parse(spark, raws: list[str | bytes], **limits) -> list[dict]:
    from pyspark.sql import functions as F

    from market_anomaly.candles.validation import Limits
    from market_anomaly.spark.job import parse_candles

    values = [raw.encode() if isinstance(raw, str) else raw for raw in raws]
    records = spark.createDataFrame([(value, None) for value in values], "value binary, timestamp timestamp")
    checks = Limits(**{"interval": "1m", "present_ms": F.lit(NOW_MS), **limits})
    return [row.asDict() for row in parse_candles(records, checks).collect()]


def test_a_valid_candle_is_typed_and_has_no_error(spark):
    [row] = parse(spark, [json.dumps(GOOD)])
    assert row["error"] is None and row["raw"] is None
    assert row["symbol"] == "BTCUSDT"  # normalised: keys and state are per upper-case symbol
    assert (row["open_time"], row["close"], row["volume"], row["trades"]) == (1_700_000_040_000, 100.5, 12.5, 40)
    assert row["produced_at"] == 1_700_000_100_010
    assert row["tick_size"] is None  # optional: the producer adds it when exchangeInfo gives one
    [row] = parse(spark, [variant(tick_size=0.01)])
    assert (row["error"], row["tick_size"]) == (None, 0.01)


@pytest.fixture(scope="module")
def invalid_rows(spark):
    return parse(spark, [raw for raw, _ in INVALID])  # one Spark job for all the cases


@pytest.mark.parametrize(("case", "reason"), [(index, reason) for index, (_, reason) in enumerate(INVALID)])
def test_an_invalid_record_keeps_its_raw_text_and_says_why(invalid_rows, case, reason):
    row = invalid_rows[case]
    assert row["error"] == reason
    assert row["raw"] == INVALID[case][0]


def test_the_next_candle_is_accepted_and_a_later_one_only_without_a_present(spark):
    next_minute = variant(open_time=NOW_MS // 60_000 * 60_000 + 60_000, close_time=NOW_MS // 60_000 * 60_000 + 119_999)
    later = variant(open_time=NOW_MS // 60_000 * 60_000 + 180_000, close_time=NOW_MS // 60_000 * 60_000 + 239_999)
    assert [row["error"] for row in parse(spark, [next_minute, later])] == [
        None, "open_time more than 1m after the present"]
    assert [row["error"] for row in parse(spark, [later], present_ms=None)] == [None]


def test_a_configured_symbol_list_rejects_the_others(spark):
    rows = parse(spark, [variant(symbol="ETHUSDT"), json.dumps(GOOD)], symbols=frozenset({"BTCUSDT"}))
    assert [row["error"] for row in rows] == ["symbol not in the configured list", None]


def test_poison_never_reaches_python_whole(spark):
    """Oversized values, invalid UTF-8 and huge symbols are rejected in the JVM; what goes on is small and valid."""
    from market_anomaly.kafka.dead_letter import RAW_BYTES

    huge_symbol = variant(symbol="S" * 70_000)
    invalid_utf8 = b'{"symbol": "BTC\xff\xfeUSDT", "open_time": 1}'
    oversized = b"{" + b" " * (1 << 20) + b"}"
    rows = parse(spark, [huge_symbol, invalid_utf8, oversized])
    assert [row["error"] for row in rows] == ["value larger than 4096 bytes", "value is not valid UTF-8",
                                              "value larger than 4096 bytes"]
    assert [row["symbol"] for row in rows] == [None, None, None]  # never a state key, never in the codec
    assert len(rows[0]["raw"]) == RAW_BYTES and rows[0]["raw"] == huge_symbol[:RAW_BYTES]
    assert rows[1]["raw"] == '{"symbol": "BTC\ufffd\ufffdUSDT", "open_time": 1}'
    [long_symbol] = parse(spark, [variant(symbol="S" * 300)])
    assert long_symbol["error"] == "symbol longer than 20 characters" and long_symbol["symbol"] is None


def test_source_options_reach_the_kafka_source_and_win_over_the_jobs_own(spark, kafka_broker, fresh_topic):
    from market_anomaly.sinks import SinkOptions
    from market_anomaly.spark.job import DetectConfig, parsed_candles

    job = DetectConfig(kafka=kafka_broker.client_config(), params=Path("unused"), checkpoint_dir=Path("unused"),
                       sinks=SinkOptions(), topic=fresh_topic, source_options={"startingOffsets": "bogus"})
    query = None
    with pytest.raises(Exception, match="bogus"):  # the source's own check of its option, at the query's start
        stream = parsed_candles(spark, job, "1m")
        query = stream.writeStream.format("memory").queryName("source_options").start()
        query.processAllAvailable()
    if query is not None:
        query.stop()


def test_the_driver_and_the_workers_use_the_allocator_that_hands_memory_back(spark):
    import pyarrow as pa

    def pools(frames):
        import pandas as pd
        import pyarrow as pa

        for _ in frames:
            yield pd.DataFrame({"pool": [pa.default_memory_pool().backend_name]})

    workers = {row["pool"] for row in spark.range(2).mapInPandas(pools, "pool string").collect()}
    assert (pa.default_memory_pool().backend_name, workers) == ("system", {"system"})
