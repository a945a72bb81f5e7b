"""The candle record: parsing Binance payloads and REST rows, every malformed case, the Kafka JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from market_anomaly.candles.record import Candle, MalformedCandle, Rejected

# The kline event example from Binance's WebSocket documentation, closed (x: true) and with its
# low moved below the open: the documented low (0.0015) is above the open (0.0010), an impossible bar.
DOCUMENTED_LOW = "0.0015"
BINANCE_EVENT = {
    "e": "kline", "E": 1672515782136, "s": "BNBBTC",
    "k": {"t": 1672515780000, "T": 1672515839999, "s": "BNBBTC", "i": "1m", "f": 100, "L": 200,
          "o": "0.0010", "c": "0.0020", "h": "0.0025", "l": "0.0009", "v": "1000", "n": 100, "x": True,
          "q": "1.0000", "V": "500", "Q": "0.500", "B": "123456"},
}
# A row of /api/v3/klines as Binance documents it.
BINANCE_ROW = [1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100", "148976.11427815",
               1499644799999, "2434.19055334", 308, "1756.87402397", "28.46694368", "0"]


def kline(**changes) -> dict:
    return {**BINANCE_EVENT["k"], **changes}


def test_from_kline_parses_the_documented_binance_example():
    candle = Candle.from_kline(BINANCE_EVENT["k"], event_time=BINANCE_EVENT["E"])
    assert candle == Candle(symbol="BNBBTC", interval="1m", open_time=1672515780000, close_time=1672515839999,
                            open=0.001, high=0.0025, low=0.0009, close=0.002, volume=1000.0, quote_volume=1.0,
                            trades=100, taker_buy_base=500.0, taker_buy_quote=0.5, event_time=1672515782136,
                            source="ws")
    assert isinstance(candle.trades, int) and isinstance(candle.open_time, int)


def test_from_rest_row_parses_the_documented_klines_row():
    candle = Candle.from_rest_row("BNBBTC", "1d", BINANCE_ROW)
    assert (candle.open_time, candle.close_time, candle.open, candle.high, candle.low, candle.close) == (
        1499040000000, 1499644799999, 0.0163479, 0.8, 0.015758, 0.015771)
    assert (candle.volume, candle.quote_volume, candle.trades) == (148976.11427815, 2434.19055334, 308)
    assert (candle.taker_buy_base, candle.taker_buy_quote) == (1756.87402397, 28.46694368)
    assert (candle.source, candle.event_time, candle.symbol, candle.interval) == ("rest", None, "BNBBTC", "1d")


@pytest.mark.parametrize("k, reason", [
    ({key: value for key, value in BINANCE_EVENT["k"].items() if key != "h"}, "missing field h"),
    ({key: value for key, value in BINANCE_EVENT["k"].items() if key != "s"}, "missing field s"),
    (kline(c=None), "missing field c"),
    (kline(o="abc"), "not numeric"),
    (kline(v=[1]), "not numeric"),
    (kline(q=True), "not numeric"),
    (kline(c="NaN"), "not finite"),
    (kline(t="1672515780000.5"), "not an integer"),
    (kline(o="0", l="0"), "open price outside"),
    (kline(l="-0.001"), "low price outside"),
    (kline(h="0.0019"), "high below open, close or low"),
    (kline(l=DOCUMENTED_LOW), "low above open or close"),
    (kline(v="-1"), "volume outside"),
    (kline(n=-3), "trades outside"),
    (kline(T=1672515780000), "close_time not after open_time"),
])
def test_from_kline_rejects_each_malformed_case(k, reason):
    with pytest.raises(MalformedCandle, match=reason):
        Candle.from_kline(k)


def test_malformed_candle_is_a_value_error_and_non_objects_are_rejected():
    assert issubclass(MalformedCandle, ValueError)
    with pytest.raises(MalformedCandle, match="not an object"):
        Candle.from_kline(["not", "a", "dict"])


def test_from_rest_row_validates_like_from_kline():
    with pytest.raises(MalformedCandle, match="at least 11 fields"):
        Candle.from_rest_row("BTCUSDT", "1m", BINANCE_ROW[:5])
    bad_high = list(BINANCE_ROW)
    bad_high[2] = "0.01"
    with pytest.raises(MalformedCandle, match="below"):
        Candle.from_rest_row("BTCUSDT", "1m", bad_high)


def test_to_json_is_the_documented_candle_message():
    candle = Candle.from_kline(kline(s="BTCUSDT", t=1769285820000, T=1769285879999, o="89391.58000000",
                                     h="89391.58000000", l="89391.57000000", c="89391.58000000", v="0.37558000",
                                     q="33574.10000000", n=12, V="0.20000000", Q="17878.30000000"),
                               event_time=1769285880012)
    candle = dataclasses.replace(candle, tick_size=0.01)  # what the producer adds from exchangeInfo
    message = json.loads(candle.to_json(produced_at=1769285880020))
    assert message == {"symbol": "BTCUSDT", "interval": "1m", "open_time": 1769285820000,
                       "close_time": 1769285879999, "open": 89391.58, "high": 89391.58, "low": 89391.57,
                       "close": 89391.58, "volume": 0.37558, "quote_volume": 33574.1, "trades": 12,
                       "taker_buy_base": 0.2, "taker_buy_quote": 17878.3, "event_time": 1769285880012,
                       "source": "ws", "tick_size": 0.01, "produced_at": 1769285880020}
    assert list(message) == list(candle.to_dict()) + ["produced_at"]


def test_rejected_keeps_raw_and_reason_and_is_immutable():
    rejected = Rejected("garbage", "invalid JSON")
    assert (rejected.raw, rejected.reason) == ("garbage", "invalid JSON")
    with pytest.raises(AttributeError):
        rejected.reason = "other"
