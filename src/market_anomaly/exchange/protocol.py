"""The Binance wire format for klines, shared by the simulator (which writes it) and the client (which reads it).

Field for field as Binance's spot API: the kline WebSocket event, the combined-stream
wrapper, the ``/api/v3/klines`` row and the error body. Numbers are strings with eight
decimals, as Binance sends them.
"""

from __future__ import annotations

from typing import Any, Mapping

from market_anomaly.candles.validation import INTERVALS, interval_ms  # noqa: F401 - the exchange's names for them

MAX_STREAMS_PER_CONNECTION = 1024   # Binance rejects a connection with more
MAX_INBOUND_MESSAGES_PER_SECOND = 5  # per connection, pings and pongs included; more closes it (1008)
KLINES_DEFAULT_LIMIT = 500
KLINES_MAX_LIMIT = 1000
WEIGHT_LIMIT_PER_MINUTE = 6000      # REQUEST_WEIGHT per IP per minute
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
QUOTE_ASSETS = ("USDT", "FDUSD", "USDC", "BTC", "ETH", "BNB", "TRY", "EUR")  # longest match first where they overlap

# Binance error codes the simulator answers with.
ERROR_BAD_PARAMETER = -1100
ERROR_MANDATORY_PARAMETER = -1102
ERROR_INVALID_INTERVAL = -1120
ERROR_INVALID_SYMBOL = -1121
ERROR_TOO_MANY_REQUESTS = -1003
ERROR_INVALID_REQUEST = 2           # WebSocket method replies: {"code": 2, "msg": "Invalid request: ...", "id": n}
ERROR_INVALID_JSON = 3


def request_weight(path: str, params: Mapping[str, Any]) -> int:
    """Binance's REQUEST_WEIGHT of a GET: klines by ``limit``, exchangeInfo 20, the rest 1."""
    if path.endswith("/klines"):
        limit = int(params.get("limit") or KLINES_DEFAULT_LIMIT)
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    if path.endswith("/exchangeInfo"):
        return 20
    return 1


def split_symbol(symbol: str) -> tuple[str, str]:
    """``ETHBTC`` -> (``ETH``, ``BTC``): base and quote asset by the known quote suffixes."""
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[:-len(quote)], quote
    return symbol[:-3], symbol[-3:]


def method_reply_error(message: Mapping[str, Any]) -> str | None:
    """The error text of a WebSocket method reply, None if it succeeded. Binance's errors are flat
    (``{"code": 2, "msg": ..., "id": n}``); a nested ``{"error": {...}}`` is accepted too."""
    if "result" in message and "code" not in message and "error" not in message:
        return None
    error = message.get("error", message)
    if isinstance(error, Mapping):
        return f"code {error.get('code')}: {error.get('msg')}"
    return str(error)


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


def error_body(code: int, message: str, request_id: int | None = None) -> dict:
    """Binance's flat error: ``{"code", "msg"}`` on REST, with the request ``id`` on the WebSocket."""
    body: dict = {"code": code, "msg": message}
    if request_id is not None:
        body["id"] = request_id
    return body


def symbol_info(symbol: str, status: str, tick_size: float | None = 0.01) -> dict:
    """One ``symbols`` entry of ``/api/v3/exchangeInfo``; a ``tick_size`` of None is sent as Binance sends a
    price filter that is switched off ("0")."""
    base, quote = split_symbol(symbol)
    tick_size = decimal(tick_size or 0.0)
    return {
        "symbol": symbol, "status": status, "baseAsset": base, "quoteAsset": quote,
        "baseAssetPrecision": 8, "quoteAssetPrecision": 8, "isSpotTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick_size, "maxPrice": "1000000.00000000",
             "tickSize": tick_size},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
        ],
    }


def shutdown_event(event_time: int) -> dict:
    """What Binance sends shortly before it closes a connection for maintenance."""
    return {"e": "serverShutdown", "E": event_time}
