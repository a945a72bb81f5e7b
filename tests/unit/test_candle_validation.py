"""The validation table: each rule on one candle (the producer's backend) and on a frame (the file readers'),
with the same reason; the dead-letter record's size limits."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from market_anomaly.candles.validation import (Limits, frame_reasons, interval_ms, interval_name, reason, rules,
                                               utf8_prefix)
from market_anomaly.kafka.dead_letter import RAW_BYTES, REASON_CHARS, dead_letter

NOW = 1_769_285_820_000  # 2026-01-24 20:17 UTC, on the minute
GOOD = {"symbol": "BTCUSDT", "interval": "1m", "open_time": NOW - 60_000, "close_time": NOW - 1, "open": 100.0,
        "high": 101.0, "low": 99.5, "close": 100.5, "volume": 12.5, "quote_volume": 1256.0, "trades": 40,
        "taker_buy_base": 6.0, "taker_buy_quote": 603.0}
LIMITS = Limits(interval="1m", present_ms=NOW, symbols=None)

CASES = [  # (changes, reason)
    ({"symbol": None}, "missing symbol"),
    ({"symbol": "  "}, "missing symbol"),
    ({"open_time": None}, "missing open_time"),
    ({"close": None}, "missing close"),
    ({"volume": math.nan}, "missing volume"),
    ({"symbol": "B" * 21}, "symbol longer than 20 characters"),
    ({"symbol": "S" * 70_000}, "symbol longer than 20 characters"),
    ({"symbol": "BTC-USDT"}, "symbol is not 1-20 letters or digits"),
    ({"symbol": "BTC USDT"}, "symbol is not 1-20 letters or digits"),
    ({"symbol": "ÉTHUSDT"}, "symbol is not 1-20 letters or digits"),
    ({"interval": "5m"}, "interval is not 1m"),
    ({"high": math.inf}, "high is not finite"),
    ({"open": -math.inf}, "open is not finite"),
    ({"quote_volume": math.inf}, "quote_volume is not finite"),
    ({"low": 0.0}, "low price outside [1e-12, 1e+12]"),
    ({"low": -1.0}, "low price outside [1e-12, 1e+12]"),
    ({"low": 1e-300}, "low price outside [1e-12, 1e+12]"),
    ({"high": 1e300}, "high price outside [1e-12, 1e+12]"),
    ({"volume": -0.5}, "volume outside [0, 1e+18]"),
    ({"volume": 1e300}, "volume outside [0, 1e+18]"),
    ({"trades": -3}, "trades outside [0, 1e+18]"),
    ({"taker_buy_quote": -1.0}, "taker_buy_quote outside [0, 1e+18]"),
    ({"high": 100.4}, "high below open, close or low"),
    ({"low": 100.2}, "low above open or close"),
    ({"open_time": 0, "close_time": 59_999}, "open_time before 2009"),
    ({"open_time": NOW + 7, "close_time": NOW + 60_000}, "open_time not aligned to 1m"),
    ({"open_time": NOW + 120_000, "close_time": NOW + 179_999}, "open_time more than 1m after the present"),
    ({"open_time": 4_102_444_800_000, "close_time": 4_102_444_859_999}, "open_time more than 1m after the present"),
    ({"close_time": NOW - 60_000}, "close_time not after open_time"),
    ({"tick_size": 0.0}, "tick_size outside [1e-12, 1e+12]"),
    ({"tick_size": -0.01}, "tick_size outside [1e-12, 1e+12]"),
    ({"tick_size": math.inf}, "tick_size is not finite"),
]


def test_a_good_candle_passes_both_backends():
    assert reason(GOOD, LIMITS) is None
    assert frame_reasons(pd.DataFrame([GOOD]), LIMITS).tolist() == [None]
    with_tick = {**GOOD, "tick_size": 0.01}  # the exchange's price step, when the producer knows it
    assert reason(with_tick, LIMITS) is None
    assert frame_reasons(pd.DataFrame([with_tick]), LIMITS).tolist() == [None]


@pytest.mark.parametrize(("changes", "expected"), CASES)
def test_each_rule_gives_its_reason_on_one_candle(changes, expected):
    assert reason({**GOOD, **changes}, LIMITS) == expected


def test_a_frame_gets_the_same_reason_per_row_as_one_candle():
    frame = pd.DataFrame([{**GOOD, **changes} for changes, _ in CASES] + [GOOD])
    for name in ("open_time", "close_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
                 "tick_size"):
        frame[name] = pd.to_numeric(frame[name])  # as the readers coerce; a missing number is NaN
    assert frame_reasons(frame, LIMITS).tolist() == [expected for _, expected in CASES] + [None]


def test_a_frame_of_repeated_symbols_gets_each_rows_reason():
    # The frame backend checks each distinct symbol once; each row must still get its own symbol's reason.
    symbols = ["BTCUSDT", "BTC-USDT", "ETHUSDT", None, "B" * 21, "BTCUSDT", "BTC-USDT", "  ", "ETHUSDT", None]
    frame = pd.DataFrame([{**GOOD, "symbol": symbol} for symbol in symbols])
    limits = Limits(interval="1m", present_ms=NOW, symbols=frozenset({"BTCUSDT", "BTC-USDT"}))
    assert frame_reasons(frame, limits).tolist() == [reason({**GOOD, "symbol": symbol}, limits) for symbol in symbols]
    assert frame_reasons(frame, limits).tolist()[:3] == [None, "symbol is not 1-20 letters or digits",
                                                         "symbol not in the configured list"]


def test_the_next_interval_is_not_the_future_and_without_a_present_nothing_is():
    next_candle = {**GOOD, "open_time": NOW + 60_000, "close_time": NOW + 119_999}
    assert reason(next_candle, LIMITS) is None
    far = {**GOOD, "open_time": 4_102_444_800_000, "close_time": 4_102_444_859_999}
    assert reason(far, Limits(interval="1m", present_ms=None)) is None


def test_the_first_failing_rule_is_the_reason():
    assert reason({**GOOD, "symbol": "B" * 30, "high": math.inf}, LIMITS) == "symbol longer than 20 characters"


def test_a_configured_symbol_list_and_optional_fields():
    limits = Limits(interval="1m", present_ms=NOW, symbols=frozenset({"ETHUSDT"}))
    assert reason(GOOD, limits) == "symbol not in the configured list"
    bare = {name: GOOD[name] for name in ("symbol", "open_time", "open", "high", "low", "close", "volume")}
    assert reason(bare, LIMITS) is None  # interval, close_time and the other amounts are optional


def test_without_an_interval_alignment_is_not_checked():
    limits = Limits(interval=None, present_ms=NOW)
    assert reason({**GOOD, "open_time": NOW - 59_000, "interval": "7m"}, limits) is None
    assert reason({**GOOD, "open_time": NOW + 1}, limits) == "open_time more than a moment after the present"
    assert "interval is not 1m" not in [text for text, _ in rules(limits)]


def test_intervals():
    assert interval_ms("1m") == 60_000 and interval_ms("4h") == 14_400_000 and interval_name(86_400_000) == "1d"
    with pytest.raises(ValueError, match="unsupported interval"):
        interval_ms("7m")
    with pytest.raises(ValueError, match="no kline interval is 1234 ms"):
        interval_name(1234)


def test_utf8_prefix_never_splits_a_character_and_replaces_invalid_bytes():
    assert utf8_prefix("aσb", 2) == "a" and utf8_prefix("aσb", 3) == "aσ"
    assert utf8_prefix(b"\xff" * 10, 6) == "\ufffd\ufffd"
    assert utf8_prefix(None, 10) == ""
    cut = utf8_prefix("€" * 100_000, 1000)
    assert len(cut.encode()) <= 1000 and set(cut) == {"€"}


def test_a_dead_letter_fits_the_broker_whatever_came_in():
    record = dead_letter(b'{"symbol": "' + b"\x01\xff" * 600_000 + b'"}', "field e is " + "x" * 10_000, "producer", 7)
    assert len(record) < 1_000_000 / 4
    decoded = json.loads(record)
    assert decoded["stage"] == "producer" and decoded["at"] == 7 and len(decoded["reason"]) == REASON_CHARS
    assert len(decoded["raw"].encode()) <= RAW_BYTES and decoded["raw"].startswith('{"symbol": "\x01\ufffd')


def test_numbers_the_frame_backend_takes_as_numpy():
    frame = pd.DataFrame([GOOD] * 3).assign(high=np.array([101.0, np.inf, np.nan]))
    assert frame_reasons(frame, LIMITS).tolist() == [None, "high is not finite", "missing high"]
