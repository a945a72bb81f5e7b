"""The candle record every part of the pipeline shares, and its checks.

A ``Candle`` is one closed kline, normalised from either the Binance WebSocket payload
(``k`` object of a ``kline`` event) or a REST ``/api/v3/klines`` row, with the same
validation for both (``validation``, the table every edge uses): whatever reaches Kafka is a
consistent OHLCV bar or it is a ``Rejected`` frame carrying the reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from market_anomaly.candles.validation import INTERVALS, Limits, reason


class MalformedCandle(ValueError):
    """A payload that cannot be a candle; the message is the reason (it goes to the dead-letter topic)."""


@dataclass(frozen=True)
class Rejected:
    """A frame that could not be turned into a candle: the raw text and why."""

    raw: str
    reason: str


# Binance kline field -> Candle field, for the fields both sources carry.
KLINE_FIELDS = {
    "t": "open_time", "T": "close_time", "o": "open", "h": "high", "l": "low", "c": "close",
    "v": "volume", "q": "quote_volume", "n": "trades", "V": "taker_buy_base", "Q": "taker_buy_quote",
}
INTEGER_FIELDS = {"open_time", "close_time", "trades"}
# Position of each kline field in a REST /api/v3/klines row.
REST_ROW_POSITIONS = {"t": 0, "o": 1, "h": 2, "l": 3, "c": 4, "v": 5, "T": 6, "q": 7, "n": 8, "V": 9, "Q": 10}


@dataclass(frozen=True)
class Candle:
    """One closed candle; times are epoch milliseconds (UTC)."""

    symbol: str
    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    taker_buy_base: float
    taker_buy_quote: float
    event_time: int | None = None
    source: str = "ws"
    tick_size: float | None = None  # the symbol's price step (exchangeInfo's PRICE_FILTER), when the producer knows it

    @classmethod
    def from_kline(cls, k: dict, *, event_time: int | None = None, source: str = "ws") -> Candle:
        """From the ``k`` object of a Binance kline event (numbers as strings, as Binance sends them)."""
        if not isinstance(k, dict):
            raise MalformedCandle(f"kline is a {type(k).__name__}, not an object")
        return cls._validated(k.get("s"), k.get("i"), k, event_time, source)

    @classmethod
    def from_rest_row(cls, symbol: str, interval: str, row: list) -> Candle:
        """From one row of ``/api/v3/klines``: ``[openTime, "open", "high", "low", "close", "volume",
        closeTime, "quoteVolume", trades, "takerBuyBase", "takerBuyQuote", "ignore"]``."""
        if not isinstance(row, (list, tuple)) or len(row) < len(REST_ROW_POSITIONS):
            raise MalformedCandle(f"klines row is not a list of at least {len(REST_ROW_POSITIONS)} fields: {_shown(row, 200)}")
        kline = {key: row[position] for key, position in REST_ROW_POSITIONS.items()}
        return cls._validated(symbol, interval, kline, None, "rest")

    @classmethod
    def _validated(cls, symbol: Any, interval: Any, k: dict, event_time: int | None, source: str) -> Candle:
        if not isinstance(symbol, str) or not symbol:
            raise MalformedCandle("missing field s (symbol)")
        if not isinstance(interval, str) or interval not in INTERVALS:
            raise MalformedCandle(f"field i (interval) is not one of {', '.join(INTERVALS)}")
        missing = [key for key in KLINE_FIELDS if k.get(key) is None]
        if missing:
            raise MalformedCandle(f"missing field {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key, field in KLINE_FIELDS.items():
            number = _number(k[key], key)
            if field in INTEGER_FIELDS:
                if number != int(number):
                    raise MalformedCandle(f"field {key} is not an integer: {_shown(k[key])}")
                number = int(number)
            values[field] = number
        symbol = symbol.upper()
        # Against its own interval; the stream checks the configured one and the present (a simulated market
        # runs ahead of the clock, so the producer cannot judge it).
        invalid = reason({"symbol": symbol, "interval": interval, **values}, Limits(interval=interval))
        if invalid:
            raise MalformedCandle(invalid)
        return cls(symbol=symbol, interval=interval, event_time=event_time, source=source, **values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, produced_at: int) -> bytes:
        """The Kafka message value (docs/ARCHITECTURE.md, "Candle message")."""
        return json.dumps({**self.to_dict(), "produced_at": produced_at}, separators=(",", ":")).encode()


def _number(value: Any, key: str) -> float:
    # bool is an int subclass; a JSON true in a price field is garbage, not 1.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MalformedCandle(f"field {key} is not numeric: {_shown(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise MalformedCandle(f"field {key} is not numeric: {_shown(value)}") from None
    if not math.isfinite(number):
        raise MalformedCandle(f"field {key} is not finite: {_shown(value)}")
    return number


def _shown(value: Any, limit: int = 40) -> str:
    """``value``'s repr for a reason, cut: the raw frame goes along in full (truncated) anyway."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
