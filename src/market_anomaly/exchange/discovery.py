"""Which symbols to watch: an explicit list or every TRADING pair of some quote assets, from ``exchangeInfo``."""

from __future__ import annotations

from dataclasses import dataclass, field

from market_anomaly.candles.validation import PRICE_BOUNDS
from market_anomaly.exchange.protocol import split_symbol


class UnknownSymbols(ValueError):
    """Explicitly named symbols the exchange does not list at all (a typo, a delisted pair)."""


@dataclass(frozen=True)
class SymbolSelection:
    """``symbols``: exactly these; otherwise every symbol quoted in one of ``quotes`` (``USDT``, ``BTC``...)."""

    symbols: tuple[str, ...] = ()
    quotes: tuple[str, ...] = ()

    def __post_init__(self):
        if bool(self.symbols) == bool(self.quotes):
            raise ValueError("a symbol selection names either symbols or quote assets")

    def matches(self, symbol: str) -> bool:
        """Whether ``symbol`` belongs to the selection by name (exchangeInfo decides whether it trades)."""
        return symbol in self.symbols if self.symbols else split_symbol(symbol)[1] in self.quotes

    def describe(self) -> str:
        return ",".join(self.symbols) if self.symbols else f"all {'/'.join(self.quotes)} pairs"


@dataclass(frozen=True)
class Listing:
    """What ``exchangeInfo`` says about a selection: the TRADING symbols and the others' statuses."""

    trading: tuple[str, ...]
    not_trading: dict[str, str] = field(default_factory=dict)   # symbol -> status (BREAK, HALT, ...)
    unknown: tuple[str, ...] = ()
    tick_sizes: dict[str, float] = field(default_factory=dict)  # symbol -> PRICE_FILTER tickSize, where it is valid


def resolve(selection: SymbolSelection, exchange_info: dict) -> Listing:
    """The selection against an ``/api/v3/exchangeInfo`` body.

    >>> info = {"symbols": [{"symbol": "BTCUSDT", "status": "TRADING", "quoteAsset": "USDT"},
    ...                     {"symbol": "ETHBTC", "status": "TRADING", "quoteAsset": "BTC"},
    ...                     {"symbol": "LUNAUSDT", "status": "BREAK", "quoteAsset": "USDT"}]}
    >>> resolve(SymbolSelection(quotes=("USDT",)), info)
    Listing(trading=('BTCUSDT',), not_trading={'LUNAUSDT': 'BREAK'}, unknown=(), tick_sizes={})
    >>> resolve(SymbolSelection(symbols=("ETHBTC", "BTCUSTD")), info).unknown
    ('BTCUSTD',)
    >>> info["symbols"][0]["filters"] = [{"filterType": "PRICE_FILTER", "tickSize": "0.01000000"}]
    >>> resolve(SymbolSelection(quotes=("USDT",)), info).tick_sizes
    {'BTCUSDT': 0.01}
    """
    listed = {entry["symbol"]: entry for entry in exchange_info.get("symbols", [])}
    if selection.symbols:
        chosen = [symbol for symbol in selection.symbols if symbol in listed]
        unknown = tuple(symbol for symbol in selection.symbols if symbol not in listed)
    else:
        quotes = set(selection.quotes)
        chosen = sorted(symbol for symbol, entry in listed.items() if entry.get("quoteAsset") in quotes)
        unknown = ()
    return Listing(
        trading=tuple(symbol for symbol in chosen if listed[symbol].get("status") == "TRADING"),
        not_trading={symbol: str(listed[symbol].get("status")) for symbol in chosen
                     if listed[symbol].get("status") != "TRADING"},
        unknown=unknown,
        tick_sizes={symbol: tick for symbol in chosen if (tick := tick_size(listed[symbol])) is not None},
    )


def tick_size(entry: dict) -> float | None:
    """A symbol's price step from its ``PRICE_FILTER``; None when it has none, or one that is not a positive number
    (Binance sends "0" for a filter that is switched off).

    >>> tick_size({"filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.00000100"}]})
    1e-06
    >>> tick_size({"filters": [{"filterType": "PRICE_FILTER", "tickSize": "0"}]}) is None
    True
    """
    for entry_filter in entry.get("filters") or ():
        if isinstance(entry_filter, dict) and entry_filter.get("filterType") == "PRICE_FILTER":
            try:
                tick = float(entry_filter.get("tickSize"))
            except (TypeError, ValueError):
                return None
            low, high = PRICE_BOUNDS
            return tick if low <= tick <= high else None
    return None
