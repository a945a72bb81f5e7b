"""Binance wire format: what the simulator writes is what the client and Candle read back."""

from __future__ import annotations

import json

import pytest

from market_anomaly.candles.record import Candle, Rejected
from market_anomaly.exchange import protocol
from market_anomaly.exchange.client import MethodReply, ServerShutdown, parse_frame
from market_anomaly.exchange.market import partial_candle
from market_anomaly.exchange.simulator import GARBAGE_FRAMES

GENERATED = {"open_time": 1769285820000, "open": 89391.58, "high": 89420.0, "low": 89350.01, "close": 89400.12,
             "volume": 12.34567, "quote_volume": 1103456.78901234, "trades": 321, "taker_buy_base": 6.5,
             "taker_buy_quote": 581000.5, "first_trade_id": 1000}


def test_interval_lengths_and_unknown_interval():
    assert [protocol.interval_ms(i) for i in ("1m", "3m", "5m", "15m", "1h", "1d")] == [
        60_000, 180_000, 300_000, 900_000, 3_600_000, 86_400_000]
    assert protocol.interval_ms("1w") == 7 * 86_400_000 and len(protocol.INTERVALS) == 16   # 1s ... 1M, all of them
    for unknown in ("7m", "1y", "", "m"):
        with pytest.raises(ValueError, match="unsupported interval"):
            protocol.interval_ms(unknown)


def test_stream_names_are_lowercase_and_parse_back():
    assert protocol.stream_name("BTCUSDT", "1m") == "btcusdt@kline_1m"
    assert protocol.parse_stream_name("ethusdt@kline_5m") == ("ETHUSDT", "5m")
    with pytest.raises(ValueError):
        protocol.parse_stream_name("btcusdt@trade")


def test_kline_event_has_binance_fields_and_formats():
    event = protocol.kline_event(GENERATED, "BTCUSDT", "1m", final=True, event_time=1769285880012)
    assert set(event) == {"e", "E", "s", "k"} and event["e"] == "kline" and event["E"] == 1769285880012
    k = event["k"]
    assert set(k) == {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}
    assert (k["t"], k["T"], k["f"], k["L"], k["n"], k["x"]) == (1769285820000, 1769285879999, 1000, 1320, 321, True)
    assert (k["o"], k["v"], k["q"]) == ("89391.58000000", "12.34567000", "1103456.78901234")


def test_simulator_payload_round_trips_through_candle():
    event = protocol.kline_event(GENERATED, "BTCUSDT", "1m", final=True, event_time=1769285880012)
    candle = Candle.from_kline(json.loads(json.dumps(event))["k"], event_time=event["E"])
    expected = {key: value for key, value in GENERATED.items() if key != "first_trade_id"}
    assert {key: getattr(candle, key) for key in expected} == expected
    assert candle.close_time == 1769285879999


def test_klines_row_round_trips_through_candle():
    row = json.loads(json.dumps(protocol.klines_row(GENERATED, "1m")))
    assert len(row) == 12 and row[11] == "0"
    candle = Candle.from_rest_row("BTCUSDT", "1m", row)
    assert (candle.open_time, candle.close, candle.trades, candle.taker_buy_quote) == (
        1769285820000, 89400.12, 321, 581000.5)


def test_parse_frame_combined_raw_open_and_replies():
    event = protocol.kline_event(GENERATED, "BTCUSDT", "1m", final=True, event_time=5)
    combined = parse_frame(json.dumps(protocol.combined("btcusdt@kline_1m", event)))
    raw = parse_frame(json.dumps(event).encode())
    assert isinstance(combined, Candle) and combined == raw and combined.event_time == 5
    still_open = protocol.kline_event(GENERATED, "BTCUSDT", "1m", final=False, event_time=5)
    assert parse_frame(json.dumps(still_open)) is None
    assert parse_frame('{"result": null, "id": 1}') == MethodReply(1, None)
    assert parse_frame('{"code": 2, "msg": "Invalid request: x", "id": 4}') == MethodReply(4, "code 2: Invalid request: x")
    assert parse_frame('{"e": "serverShutdown", "E": 1}') == ServerShutdown()


@pytest.mark.parametrize("frame, reason", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"e": "trade", "p": "1"}', "not a kline event"),
    ('{"e": "kline", "k": {"t": 1}}', "missing field x"),
    ('{"stream": "x", "data": {"e": "kline", "E": 1, "k": {"x": true, "t": 1}}}', "missing field"),
    *[(garbage, "") for garbage in GARBAGE_FRAMES],
])
def test_parse_frame_turns_garbage_into_rejected(frame, reason):
    item = parse_frame(frame)
    assert isinstance(item, Rejected) and item.raw == frame and reason in item.reason


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.99, 1.0])
def test_partial_candle_is_consistent_and_converges(fraction):
    partial = partial_candle(GENERATED, fraction)
    assert partial["high"] >= max(partial["open"], partial["close"]) >= min(partial["open"], partial["close"]) \
        >= partial["low"] > 0
    assert partial["high"] <= GENERATED["high"] and partial["low"] >= GENERATED["low"]
    assert partial["volume"] == pytest.approx(GENERATED["volume"] * fraction)
    if fraction == 1.0:
        assert partial == GENERATED
