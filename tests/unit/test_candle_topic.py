"""The decider's parser of candle-topic records (``candles.topic``) gives what the Spark stream's gives: the same
table of invalid records (``support.INVALID``, also run through Spark in ``test_spark_parsing``) and reasons."""

from __future__ import annotations

import json
import math

import pytest
from support import GOOD, INVALID, NOW_MS, variant

from market_anomaly.candles.topic import _parse_together, parse_values
from market_anomaly.candles.validation import RAW_BYTES, Limits


def parse(raws: list[str | bytes], present: int | None = NOW_MS, check_present: bool = True, **limits) -> list[dict]:
    values = [raw.encode() if isinstance(raw, str) else raw for raw in raws]
    frame = parse_values(values, [present] * len(values), Limits(**{"interval": "1m", **limits}), check_present)
    return frame.to_dict("records")


def test_a_valid_candle_is_typed_and_has_no_error():
    [row] = parse([json.dumps(GOOD)])
    assert row["error"] is None and row["raw"] is None
    assert row["symbol"] == "BTCUSDT"
    assert (row["open_time"], row["close"], row["volume"], row["trades"]) == (1_700_000_040_000, 100.5, 12.5, 40)
    assert (row["produced_at"], row["source"], row["interval"]) == (1_700_000_100_010, "ws", "1m")
    assert math.isnan(row["tick_size"])
    [row] = parse([variant(tick_size=0.01)])
    assert (row["error"], row["tick_size"]) == (None, 0.01)


def test_missing_interval_and_produced_at_are_the_models_and_the_records():
    document = {key: value for key, value in GOOD.items() if key not in ("interval", "produced_at")}
    [row] = parse([json.dumps(document)])
    assert (row["error"], row["interval"], row["produced_at"]) == (None, "1m", NOW_MS)


@pytest.mark.parametrize(("raw", "reason"), INVALID)
def test_an_invalid_record_keeps_its_raw_text_and_says_why_as_in_spark(raw, reason):
    [row] = parse([raw])
    assert (row["error"], row["raw"]) == (reason, raw)


def test_the_next_candle_is_accepted_and_a_later_one_only_without_a_present():
    minute = NOW_MS // 60_000 * 60_000
    next_minute = variant(open_time=minute + 60_000, close_time=minute + 119_999)
    later = variant(open_time=minute + 180_000, close_time=minute + 239_999)
    assert [row["error"] for row in parse([next_minute, later])] == [None, "open_time more than 1m after the present"]
    assert [row["error"] for row in parse([later], present=None)] == [None]  # a record without a time
    assert [row["error"] for row in parse([later], check_present=False)] == [None]  # --accept-future-candles


def test_a_configured_symbol_list_rejects_the_others():
    rows = parse([variant(symbol="ETHUSDT"), json.dumps(GOOD)], symbols=frozenset({"BTCUSDT"}))
    assert [row["error"] for row in rows] == ["symbol not in the configured list", None]


def test_poison_is_rejected_before_parsing_and_never_keys_a_state():
    huge_symbol = variant(symbol="S" * 70_000)
    invalid_utf8 = b'{"symbol": "BTC\xff\xfeUSDT", "open_time": 1}'
    oversized = b"{" + b" " * (1 << 20) + b"}"
    rows = parse([huge_symbol, invalid_utf8, oversized, None])
    assert [row["error"] for row in rows] == ["value larger than 4096 bytes", "value is not valid UTF-8",
                                              "value larger than 4096 bytes", "empty value"]
    assert [row["symbol"] for row in rows] == [None] * 4
    assert rows[0]["raw"] == huge_symbol[:RAW_BYTES] and len(rows[2]["raw"]) == RAW_BYTES
    assert rows[1]["raw"] == '{"symbol": "BTC\ufffd\ufffdUSDT", "open_time": 1}'
    [long_symbol] = parse([variant(symbol="S" * 300)])
    assert long_symbol["error"] == "symbol longer than 20 characters" and long_symbol["symbol"] is None


def test_types_follow_sparks_json_reader():
    rows = parse([variant(trades=40.5), variant(open_time="1700000040000"), variant(close="NaN"), variant(symbol=7)])
    assert math.isnan(rows[0]["trades"]) and rows[0]["error"] is None  # optional: a float is no count, so missing
    assert rows[1]["error"] == "missing open_time"  # a quoted number is not a number
    assert rows[2]["error"] == "close is not finite"
    assert (rows[3]["symbol"], rows[3]["error"]) == ("7", None)


def test_a_poll_parsed_together_gives_each_record_what_it_gets_alone():
    """A poll of clean records is parsed by Arrow in one call, a poll with a bad one record by record: the
    candles and reasons are the same either way."""
    raws = [json.dumps(GOOD), *[raw for raw, _ in INVALID if isinstance(raw, str) and raw.startswith("{")]]
    raws = [raw for raw in raws if _parse_together([raw.encode()]) is not None]
    assert len(raws) > 20 and _parse_together([raw.encode() for raw in raws]) is not None
    together, alone = parse(raws), [parse([raw])[0] for raw in raws]
    mixed = parse([*raws, "not json at all"])[:-1]  # one value Arrow refuses: every record parsed on its own
    for rows in (together, mixed):
        assert [row["error"] for row in rows] == [row["error"] for row in alone]
        assert json.dumps(rows, default=str) == json.dumps(alone, default=str)
