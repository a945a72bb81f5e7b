"""Where the simulator's candles come from: a synthetic market, a CSV replay, and labelled injected anomalies.

Two sources with one interface (``next_block``): ``SyntheticSource``
generates realistic candles (GARCH(1,1) volatility clustering with Student-t innovations,
intraday seasonality, volume that rises with volatility and with the size of the move,
taker-buy share leaning with the move), ``ReplaySource`` plays real candle files back.
``Market`` keeps every candle a source has produced per symbol, applies the scheduled
anomaly injections (``training.injection``, so injection logic exists once) and answers
the simulator's questions: the candle at an open time, the candles in a time range.
Pure NumPy/pandas and deterministic given the seed.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import pandas as pd

from market_anomaly.candles.files import read_candles
from market_anomaly.exchange.protocol import interval_ms

log = logging.getLogger(__name__)

COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
           "taker_buy_base", "taker_buy_quote")
MINUTE_MS = 60_000
VOLUME_DECIMALS = 5
AVERAGE_TRADE_QUOTE = 300.0   # USDT per trade: a typical Binance spot fill size


@dataclass(frozen=True)
class SymbolProfile:
    """Starting price, per-minute return volatility and median per-minute volume (base asset)."""

    price: float
    volatility: float
    volume: float


# Levels of late 2025 / early 2026; volatilities from 1m log-returns of real candles.
KNOWN_PROFILES = {
    "BTCUSDT": SymbolProfile(90_000.0, 0.0007, 8.0),
    "ETHUSDT": SymbolProfile(3_000.0, 0.0010, 170.0),
    "BNBUSDT": SymbolProfile(900.0, 0.0009, 60.0),
    "SOLUSDT": SymbolProfile(200.0, 0.0013, 2_000.0),
    "XRPUSDT": SymbolProfile(2.2, 0.0013, 200_000.0),
    "ADAUSDT": SymbolProfile(0.7, 0.0015, 300_000.0),
    "DOGEUSDT": SymbolProfile(0.3, 0.0015, 1_000_000.0),
    "AVAXUSDT": SymbolProfile(35.0, 0.0015, 5_000.0),
}


def symbol_key(symbol: str) -> int:
    """A stable per-symbol number (Python's hash() changes between runs)."""
    return zlib.crc32(symbol.encode())


def profile_for(symbol: str) -> SymbolProfile:
    """The known profile, or a plausible one derived from the symbol's name (same name, same profile)."""
    if symbol in KNOWN_PROFILES:
        return KNOWN_PROFILES[symbol]
    rng = np.random.default_rng(symbol_key(symbol))
    price = float(10 ** rng.uniform(-3, 3))
    # About 50k USDT traded per minute, like a mid-cap altcoin.
    return SymbolProfile(price, float(rng.uniform(0.0010, 0.0025)), 50_000.0 / price)


def price_decimals(price: float) -> int:
    """Tick size as decimals, close to Binance's (BTC 0.01, XRP 0.0001, DOGE 0.00001)."""
    return int(min(8, max(2, 4 - math.floor(math.log10(price)))))


def intraday_seasonality(open_times: np.ndarray) -> np.ndarray:
    """Activity multiplier by UTC time of day: busiest around the US open (15:00 UTC), quietest at night."""
    hour = (open_times % 86_400_000) / 3_600_000
    return 1.0 + 0.25 * np.cos(2 * np.pi * (hour - 15.0) / 24.0)


def trade_activity(frame: pd.DataFrame, lean: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Quote volume, trade count and taker-buy volumes consistent with a frame's OHLCV.

    ``lean`` in [-1, 1] tilts the taker-buy share (buyers dominate rising candles).
    """
    n = len(frame)
    typical = (frame["open"] + frame["high"] + frame["low"] + frame["close"]).to_numpy() / 4
    volume = frame["volume"].to_numpy()
    quote = volume * typical
    trades = np.maximum(1, np.round(quote / (AVERAGE_TRADE_QUOTE * rng.lognormal(0.0, 0.3, n))))
    share = np.clip(0.5 + 0.2 * lean + rng.normal(0.0, 0.07, n), 0.02, 0.98)
    taker_base = np.round(volume * share, VOLUME_DECIMALS)
    return frame.assign(quote_volume=np.round(quote, 8), trades=trades.astype(np.int64),
                        taker_buy_base=taker_base, taker_buy_quote=np.round(taker_base * typical, 8))


class CandleSource(Protocol):
    """Consecutive candles per symbol, block by block."""

    symbols: tuple[str, ...]
    interval: str

    def next_block(self, symbol: str, count: int) -> pd.DataFrame:
        """The next ``count`` candles (``COLUMNS``) after the previous block; fewer when the source runs out."""

    def tick_size(self, symbol: str) -> float | None:
        """The symbol's price step, as the exchange's PRICE_FILTER gives it; None when unknown."""


@dataclass
class _PathState:
    """Where one symbol's synthetic path stands between blocks."""

    rng: np.random.Generator
    profile: SymbolProfile
    decimals: int
    next_open_time: int
    last_close: float
    variance: float
    last_return: float


class SyntheticSource:
    """GARCH(1,1) market with Student-t innovations; each symbol has its own seeded random stream,
    so a symbol's candles do not depend on which other symbols are simulated."""

    ALPHA, BETA = 0.08, 0.90      # persistence 0.98: volatility clusters last tens of minutes
    DEGREES_OF_FREEDOM = 4.0      # fat tails like real 1m returns (kurtosis far above 3)

    def __init__(self, symbols: Sequence[str], interval: str, seed: int, first_open_time: int):
        self.symbols = tuple(symbols)
        self.interval = interval
        self._interval_ms = interval_ms(interval)
        self._state: dict[str, _PathState] = {}
        for symbol in self.symbols:
            profile = profile_for(symbol)
            self._state[symbol] = _PathState(
                rng=np.random.default_rng([seed, symbol_key(symbol)]), profile=profile,
                decimals=price_decimals(profile.price), next_open_time=first_open_time,
                last_close=round(profile.price, price_decimals(profile.price)),
                variance=self._target_variance(profile), last_return=0.0,
            )

    def tick_size(self, symbol: str) -> float:
        return 10.0 ** -self._state[symbol].decimals

    def _target_variance(self, profile: SymbolProfile) -> float:
        return profile.volatility ** 2 * self._interval_ms / MINUTE_MS

    def next_block(self, symbol: str, count: int) -> pd.DataFrame:
        state = self._state[symbol]
        rng, profile = state.rng, state.profile
        open_times = state.next_open_time + self._interval_ms * np.arange(count, dtype=np.int64)
        season = intraday_seasonality(open_times)
        nu = self.DEGREES_OF_FREEDOM
        shocks = rng.standard_t(nu, count) / math.sqrt(nu / (nu - 2))
        sigma = self._garch_volatility(state, shocks) * season
        returns = sigma * shocks

        scale = 10.0 ** state.decimals
        closes = np.round(state.last_close * np.exp(np.cumsum(returns)), state.decimals)
        closes = np.maximum(closes, 1 / scale)
        opens = np.concatenate(([state.last_close], closes[:-1]))
        wick_up = np.exp(0.3 * sigma * np.abs(rng.normal(size=count)))
        wick_down = np.exp(-0.3 * sigma * np.abs(rng.normal(size=count)))
        # Round wicks outwards so the rounded high/low still bracket the (already rounded) open and close.
        highs = np.ceil(np.maximum(opens, closes) * wick_up * scale - 1e-6) / scale
        lows = np.maximum(np.floor(np.minimum(opens, closes) * wick_down * scale + 1e-6) / scale, 1 / scale)

        target_sigma = math.sqrt(self._target_variance(profile))
        log_volume = (np.log(profile.volume * self._interval_ms / MINUTE_MS) + np.log(season)
                      + 0.6 * np.log(sigma / target_sigma) + 0.35 * np.abs(shocks) + rng.normal(0.0, 0.45, count))
        volumes = np.maximum(np.round(np.exp(log_volume), VOLUME_DECIMALS), 10.0 ** -VOLUME_DECIMALS)

        frame = pd.DataFrame({"open_time": open_times, "open": np.round(opens, state.decimals),
                              "high": np.round(highs, state.decimals), "low": np.round(lows, state.decimals),
                              "close": closes, "volume": volumes})
        state.next_open_time = int(open_times[-1]) + self._interval_ms
        state.last_close = float(closes[-1])
        return trade_activity(frame, np.tanh(shocks), rng)[list(COLUMNS)]

    def _garch_volatility(self, state: _PathState, shocks: np.ndarray) -> np.ndarray:
        """Conditional volatility per candle; the recursion is inherently sequential, everything else is vectorised."""
        omega = self._target_variance(state.profile) * (1 - self.ALPHA - self.BETA)
        variance, last_return = state.variance, state.last_return
        sigma = np.empty(len(shocks))
        for i, shock in enumerate(shocks.tolist()):
            variance = omega + self.ALPHA * last_return * last_return + self.BETA * variance
            sigma[i] = math.sqrt(variance)
            last_return = sigma[i] * shock
        state.variance, state.last_return = variance, last_return
        return sigma


SYNTHETIC_START = 1_700_000_000_000  # 2023-11-14 22:13 UTC: a fixed first minute keeps generated data reproducible


def synthetic_candles(n: int, seed: int = 0, symbol: str = "TESTUSDT", start: int = SYNTHETIC_START) -> pd.DataFrame:
    """``n`` one-minute candles of the simulator's market for ``symbol``, in the candle-message layout
    (symbol, interval, times, OHLCV, taker buys, produced_at five seconds after the close): for tests,
    benchmarks and history files.

    >>> candles = synthetic_candles(500, seed=1, symbol="TESTUSDT")
    >>> len(candles), bool((candles["high"] >= candles[["open", "close"]].max(axis=1)).all())
    (500, True)
    """
    frame = SyntheticSource([symbol], "1m", seed, start).next_block(symbol, n)
    frame.insert(0, "symbol", symbol)
    frame.insert(1, "interval", "1m")
    frame.insert(3, "close_time", frame["open_time"] + MINUTE_MS - 1)
    return frame.assign(produced_at=frame["open_time"] + MINUTE_MS + 5_000)


def read_candle_file(path: Path, interval: str) -> tuple[str, pd.DataFrame]:
    """A candle file -> (symbol, OHLCV frame with ``open_time`` in ms, sorted, one row per minute).

    Columns and symbol as ``candles.files.read_candles`` accepts them (the offline
    commands read the same files); here the candles must also be ``interval`` apart.
    """
    frame = read_candles(path)
    symbol = str(frame["symbol"].iloc[0])
    frame = frame.sort_values("open_time").drop_duplicates("open_time")
    step = int(np.median(np.diff(frame["open_time"].to_numpy()))) if len(frame) > 1 else interval_ms(interval)
    if step != interval_ms(interval):
        raise ValueError(f"{path}: candles are {step // 1000}s apart, but the interval is {interval}")
    return symbol, frame.reset_index(drop=True)


class ReplaySource:
    """Real candle files played back; columns Binance has but the file lacks are derived consistently."""

    def __init__(self, paths: Sequence[Path | str], interval: str, seed: int):
        self.interval = interval
        self._frames: dict[str, pd.DataFrame] = {}
        self._positions: dict[str, int] = {}
        self._ticks: dict[str, float | None] = {}
        for path in paths:
            symbol, frame = read_candle_file(Path(path), interval)
            if not {"quote_volume", "trades", "taker_buy_base", "taker_buy_quote"} <= set(frame.columns):
                returns = np.log(frame["close"] / frame["open"]).to_numpy()
                lean = np.tanh(returns / (returns.std() or 1.0))
                frame = trade_activity(frame, lean, np.random.default_rng([seed, symbol_key(symbol)]))
            self._frames[symbol] = frame[list(COLUMNS)]
            self._positions[symbol] = 0
            ticks = frame["tick_size"].dropna() if "tick_size" in frame else ()
            self._ticks[symbol] = float(ticks.iloc[-1]) if len(ticks) else None
        self.symbols = tuple(self._frames)

    def tick_size(self, symbol: str) -> float | None:
        """From the file's ``tick_size`` column (its last value), when it has one."""
        return self._ticks[symbol]

    def live_start(self, history: int) -> int:
        """The first open time at which every symbol has ``history`` candles before it (if it has that many)."""
        return max(int(frame["open_time"].iloc[min(history, len(frame) - 1)]) for frame in self._frames.values())

    def next_block(self, symbol: str, count: int) -> pd.DataFrame:
        start = self._positions[symbol]
        self._positions[symbol] = start + count
        return self._frames[symbol].iloc[start:start + count]


@dataclass(frozen=True)
class Injection:
    """An anomaly to inject: ``kind`` from ``training.injection.KINDS`` at the candle opening at ``open_time``."""

    symbol: str
    kind: str
    open_time: int
    magnitude: float | None = None


def random_injections(symbols: Sequence[str], kinds: Sequence[str], count: int, live_start: int, interval: str,
                      rng: np.random.Generator, *, planned: Sequence[Injection] = (), earliest_minute: int = 15,
                      span_minutes: int = 60, min_gap_minutes: int = 10) -> list[Injection]:
    """``count`` injections spread over ``span_minutes`` starting ``earliest_minute`` after the live start
    (so detectors are warm), kinds in turn, never closer than ``min_gap_minutes`` on one symbol to
    each other or to the ``planned`` ones."""
    step = interval_ms(interval)
    # Widen the window when it cannot hold that many injections at the minimum gap.
    span_minutes = max(span_minutes, math.ceil((count + len(planned)) / len(symbols)) * (min_gap_minutes + 1))
    chosen: list[Injection] = []
    kind_order = rng.permutation(len(kinds))
    while len(chosen) < count:
        symbol = str(rng.choice(symbols))
        minute = earliest_minute + int(rng.integers(0, span_minutes))
        open_time = live_start + minute * MINUTE_MS // step * step
        if all(other.symbol != symbol or abs(other.open_time - open_time) >= min_gap_minutes * MINUTE_MS
               for other in [*planned, *chosen]):
            chosen.append(Injection(symbol, kinds[kind_order[len(chosen) % len(kinds)]], open_time))
    return sorted(chosen, key=lambda injection: injection.open_time)


def partial_candle(candle: dict, fraction: float) -> dict:
    """The still-open candle ``fraction`` of the way through: a consistent OHLC bar converging to the final one."""
    top, bottom = max(candle["open"], candle["close"]), min(candle["open"], candle["close"])
    close = candle["open"] + (candle["close"] - candle["open"]) * fraction
    return {
        **candle, "close": close,
        "high": max(candle["open"], close) + (candle["high"] - top) * fraction,
        "low": min(candle["open"], close) - (bottom - candle["low"]) * fraction,
        **{field: candle[field] * fraction for field in ("volume", "quote_volume", "taker_buy_base", "taker_buy_quote")},
        "trades": min(int(candle["trades"]), max(1, int(candle["trades"] * fraction))),  # a quiet candle stays at 0
    }


Injector = Callable[..., tuple[pd.DataFrame, dict]]


class Market:
    """Every candle served so far, per symbol, with the scheduled anomalies injected.

    Candles are generated on demand in blocks. An injection is applied at start-up to
    everything from ``INJECTION_CONTEXT`` candles before it to the end of what exists (at
    least ``INJECTION_CONTEXT`` candles after it), before any of it can have been served.
    Some kinds move the price level for good (a crash that recovers only partly); later
    blocks from the source are scaled by the same factor, so every open stays the previous close.
    """

    BLOCK = 240
    INJECTION_CONTEXT = 60
    PRICE_COLUMNS = ("open", "high", "low", "close", "quote_volume", "taker_buy_quote")

    def __init__(self, source: CandleSource, injections: Sequence[Injection] = (), *, seed: int = 7,
                 injector: Injector | None = None):
        self.source = source
        self.symbols = source.symbols
        self.interval = source.interval
        self.interval_ms = interval_ms(source.interval)
        self.labels: list[dict] = []
        self._frames = {symbol: pd.DataFrame(columns=list(COLUMNS)) for symbol in self.symbols}
        self._columns: dict[str, dict[str, np.ndarray]] = {symbol: {"open_time": np.empty(0, np.int64)}
                                                           for symbol in self.symbols}
        self._price_level = {symbol: 1.0 for symbol in self.symbols}
        self._exhausted: set[str] = set()
        self._rng = np.random.default_rng([seed, 1])
        if injections and injector is None:
            from market_anomaly.training.injection import inject as injector
        self._injector = injector
        for injection in sorted(injections, key=lambda item: item.open_time):
            self._inject(injection)

    def _extend_to(self, symbol: str, open_time: int) -> dict[str, np.ndarray]:
        """Make sure the candle opening at ``open_time`` has been produced (if the source has it); the columns."""
        open_times = self._columns[symbol]["open_time"]
        last_open_time = open_times[-1] if len(open_times) else -1
        blocks = []
        while symbol not in self._exhausted and last_open_time < open_time:
            block = self.source.next_block(symbol, self.BLOCK)
            if len(block) < self.BLOCK:
                self._exhausted.add(symbol)
            if len(block):
                level = self._price_level[symbol]
                blocks.append(block.assign(**{column: block[column] * level for column in self.PRICE_COLUMNS}))
                last_open_time = block["open_time"].iloc[-1]
        if blocks:
            existing = [self._frames[symbol]] if len(open_times) else []
            self._store(symbol, pd.concat(existing + blocks, ignore_index=True))
        return self._columns[symbol]

    def _store(self, symbol: str, frame: pd.DataFrame) -> pd.DataFrame:
        # Trade ids count every trade since the market began, as Binance's do.
        trades = frame["trades"].to_numpy()
        frame = frame.assign(first_trade_id=np.cumsum(trades) - trades)
        self._frames[symbol] = frame
        # Plain arrays too: the simulator looks candles up one by one, many times a second.
        self._columns[symbol] = {column: frame[column].to_numpy() for column in frame.columns}
        return frame

    def _inject(self, injection: Injection) -> None:
        open_times = self._extend_to(injection.symbol,
                                     injection.open_time + self.INJECTION_CONTEXT * self.interval_ms)["open_time"]
        matches = np.flatnonzero(open_times == injection.open_time)
        if not len(matches):
            log.warning("no %s candle opens at %d; injection %s skipped", injection.symbol, injection.open_time,
                        injection.kind)
            return
        frame = self._frames[injection.symbol]
        start = max(0, int(matches[0]) - self.INJECTION_CONTEXT)
        before = frame.iloc[start:][list(COLUMNS)].reset_index(drop=True)
        injected, label = self._injector(before, injection.kind, int(matches[0]) - start, self._rng,
                                         magnitude=injection.magnitude)
        self._price_level[injection.symbol] *= float(injected["close"].iloc[-1] / before["close"].iloc[-1])
        self._store(injection.symbol, pd.concat([frame.iloc[:start][list(COLUMNS)], injected[list(COLUMNS)]],
                                                ignore_index=True))
        self.labels.append({"symbol": injection.symbol, **label})
        log.info("injected %s into %s at %s", injection.kind, injection.symbol,
                 pd.Timestamp(injection.open_time, unit="ms", tz="UTC"))

    def tick_size(self, symbol: str) -> float | None:
        """The source's price step for ``symbol`` (what the simulator's exchangeInfo serves)."""
        return self.source.tick_size(symbol)

    def prepare(self, open_time: int) -> None:
        """Produce every symbol's candles up to ``open_time`` now, rather than on the first requests."""
        for symbol in self.symbols:
            self._extend_to(symbol, open_time)

    def candle(self, symbol: str, open_time: int) -> dict | None:
        """The candle opening at ``open_time`` (``COLUMNS`` and ``first_trade_id``); None if there is none."""
        columns = self._extend_to(symbol, open_time)
        index = int(np.searchsorted(columns["open_time"], open_time))
        if index >= len(columns["open_time"]) or columns["open_time"][index] != open_time:
            return None
        return {column: values[index].item() for column, values in columns.items()}

    def candles(self, symbol: str, start_time: int | None, end_time: int, limit: int) -> pd.DataFrame:
        """Up to ``limit`` candles opening in ``[start_time, end_time]``, oldest first; without a
        start time, the last ``limit`` opening at or before ``end_time`` (as Binance's klines)."""
        open_times = self._extend_to(symbol, end_time)["open_time"]
        end = int(np.searchsorted(open_times, end_time, side="right"))
        first = max(0, end - limit) if start_time is None else int(np.searchsorted(open_times, start_time))
        return self._frames[symbol].iloc[first:min(end, first + limit)]
