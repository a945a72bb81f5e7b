"""The Spark job's parsing and validation (real Spark session): every record is a candle or has a reason."""

from __future__ import annotations

from pathlib import Path

import json

import pytest

pytestmark = pytest.mark.integration

GOOD = {"symbol": "btcusdt", "interval": "1m", "open_time": 1_700_000_040_000, "close_time": 1_700_000_099_999,
        "open": 100.0, "high": 101.0, "low": 99.5, "close": 100.5, "volume": 12.5, "quote_volume": 1256.0,
        "trades": 40, "taker_buy_base": 6.0, "taker_buy_quote": 603.0, "event_time": 1_700_000_100_005,
        "source": "ws", "produced_at": 1_700_000_100_010}


@pytest.fixture(scope="module")
def spark():
    from market_anomaly.spark.session import build_session

    session = build_session("test-parsing", "local[1]")
    yield session
    session.stop()


def parse(spark, raws: list[str]) -> list[dict]:
    from market_anomaly.spark.job import parse_candles

    records = spark.createDataFrame([(raw, None) for raw in raws], "raw string, timestamp timestamp")
    return [row.asDict() for row in parse_candles(records).collect()]


def variant(**changes) -> str:
    return json.dumps({**GOOD, **changes})


def test_a_valid_candle_is_typed_and_has_no_error(spark):
    [row] = parse(spark, [json.dumps(GOOD)])
    assert row["error"] is None and row["raw"] is None
    assert row["symbol"] == "BTCUSDT"  # normalised: keys and state are per upper-case symbol
    assert (row["open_time"], row["close"], row["volume"], row["trades"]) == (1_700_000_040_000, 100.5, 12.5, 40)
    assert row["produced_at"] == 1_700_000_100_010


@pytest.mark.parametrize(("raw", "reason"), [
    ("not json at all", "not a candle JSON object"),
    ("[1, 2, 3]", "not a candle JSON object"),
    (variant(close="100.5x"), "missing or non-numeric fields: close"),
    (json.dumps({k: v for k, v in GOOD.items() if k not in ("volume", "open_time")}),
     "missing or non-numeric fields: open_time, volume"),
    (variant(symbol=" "), "empty symbol"),
    (variant(low=0.0), "non-positive price"),
    (variant(high=100.0), "high below open/close/low"),
    (variant(low=100.2), "low above open/close"),
    (variant(volume=-1.0), "negative volume"),
    (variant(close_time=GOOD["open_time"]), "close_time not after open_time"),
])
def test_an_invalid_record_keeps_its_raw_text_and_says_why(spark, raw, reason):
    [row] = parse(spark, [raw])
    assert row["error"] == reason
    assert row["raw"] == raw


def test_nan_prices_are_rejected(spark):
    [row] = parse(spark, [variant().replace('"close": 100.5', '"close": NaN')])
    assert row["error"] == "NaN price or volume"


def test_source_options_reach_the_kafka_source_and_win_over_the_jobs_own(spark, kafka_broker, fresh_topic):
    from market_anomaly.sinks import SinkOptions
    from market_anomaly.spark.job import DetectConfig, parsed_candles

    job = DetectConfig(kafka=kafka_broker.client_config(), params=Path("unused"), checkpoint_dir=Path("unused"),
                       sinks=SinkOptions(), topic=fresh_topic, source_options={"startingOffsets": "bogus"})
    query = None
    with pytest.raises(Exception, match="bogus"):  # the source's own check of its option, at the query's start
        stream = parsed_candles(spark, job)
        query = stream.writeStream.format("memory").queryName("source_options").start()
        query.processAllAvailable()
    if query is not None:
        query.stop()
