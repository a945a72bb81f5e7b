"""The Binance wire format for klines, shared by the simulator (which writes it) and the client (which reads it).

Field for field as Binance's spot API: the kline WebSocket event, the combined-stream
wrapper, the ``/api/v3/klines`` row and the error body. Numbers are strings with eight
decimals, as Binance sends them.
"""

from __future__ import annotations

from typing import Any, Mapping

from market_anomaly.candles.validation import INTERVALS, interval_ms  # noqa: F401 - the exchange's names for them

MAX_STREAMS_PER_CONNECTION = 1024   # Binance rejects a connection with more
KLINES_DEFAULT_LIMIT = 500
KLINES_MAX_LIMIT = 1000

# Binance error codes the simulator answers with.
ERROR_BAD_PARAMETER = -1100
ERROR_MANDATORY_PARAMETER = -1102
ERROR_INVALID_INTERVAL = -1120
ERROR_INVALID_SYMBOL = -1121


def stream_name(symbol: str, interval: str) -> str:
    """``BTCUSDT``, ``1m`` -> ``btcusdt@kline_1m`` (Binance stream names are lowercase)."""
    return f"{symbol.lower()}@kline_{interval}"


def parse_stream_name(name: str) -> tuple[str, str]:
    """``btcusdt@kline_1m`` -> (``BTCUSDT``, ``1m``); ValueError if it is not a kline stream."""
    symbol, sep, kind = name.partition("@kline_")
    if not sep or not symbol or not kind:
        raise ValueError(f"not a kline stream: {name!r}")
    return symbol.upper(), kind


def decimal(value: float) -> str:
    return f"{value:.8f}"


def kline_event(candle: Mapping[str, Any], symbol: str, interval: str, *, final: bool, event_time: int) -> dict:
    """The ``kline`` event for one (possibly still open) candle.

    ``candle`` has open_time, open, high, low, close, volume, quote_volume, trades,
    taker_buy_base, taker_buy_quote and first_trade_id.
    """
    open_time = int(candle["open_time"])
    first_trade = int(candle["first_trade_id"])
    return {
        "e": "kline", "E": event_time, "s": symbol,
        "k": {
            "t": open_time, "T": open_time + interval_ms(interval) - 1, "s": symbol, "i": interval,
            "f": first_trade, "L": first_trade + int(candle["trades"]) - 1,
            "o": decimal(candle["open"]), "c": decimal(candle["close"]),
            "h": decimal(candle["high"]), "l": decimal(candle["low"]),
            "v": decimal(candle["volume"]), "n": int(candle["trades"]), "x": final,
            "q": decimal(candle["quote_volume"]), "V": decimal(candle["taker_buy_base"]),
            "Q": decimal(candle["taker_buy_quote"]), "B": "0",
        },
    }


def combined(stream: str, payload: dict) -> dict:
    """The ``/stream`` wrapper around one stream's payload."""
    return {"stream": stream, "data": payload}


def klines_row(candle: Mapping[str, Any], interval: str) -> list:
    """One ``/api/v3/klines`` row (Binance's array layout)."""
    open_time = int(candle["open_time"])
    return [
        open_time, decimal(candle["open"]), decimal(candle["high"]), decimal(candle["low"]),
        decimal(candle["close"]), decimal(candle["volume"]), open_time + interval_ms(interval) - 1,
        decimal(candle["quote_volume"]), int(candle["trades"]), decimal(candle["taker_buy_base"]),
        decimal(candle["taker_buy_quote"]), "0",
    ]


def error_body(code: int, message: str) -> dict:
    return {"code": code, "msg": message}
