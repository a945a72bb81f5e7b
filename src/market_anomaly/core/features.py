"""Per-candle features and the rolling statistics the detectors compare them with.

Everything here works on whole arrays (a chunk of new candles plus the tail kept in the
state), never row by row. Rolling statistics are *refreshed*: the baseline for the value
at stream position ``t`` is computed over the ``window`` values before position
``q = t - t % refresh - guard``. Positions count the candles a symbol has seen, so the
baselines, and therefore every decision, are the same however the stream is cut into
chunks; and an event's first minutes never dilute their own baseline (the guard band).

Thin markets: prices move in whole ticks and most minutes may have no trade (volume 0, the
last close carried). Each symbol's tick is the smallest price step it has shown so far
(``price_steps``, a running minimum kept in the state), or from its first candle the exchange's
tick size when the candles carry one (``tick_size``, from ``exchangeInfo``); as a share of the price (``CandleFeatures.tick_return``)
it floors the return and range scales (a one-tick move is one tick, not hundreds of
sigmas of a zero scale), and volume levels are medians of the minutes that traded
(``traded_level``), so a single trade after silence is an ordinary trade.

Gaps: windows count candles, not minutes (after a gap a window reaches further back in
time). The log return of the first candle after a gap is its own open-to-close return,
so a gap never looks like one huge 1-minute move.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

IQR_TO_SIGMA = 1.349  # the interquartile range of a normal distribution over its standard deviation

Statistic = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def median_iqr(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise median and interquartile-range sigma (IQR / 1.349) of a 2-D array of windows; NaN rows -> NaN.

    As robust as the MAD and a third of its cost: one sort yields median and quartiles.

    >>> center, sigma = median_iqr(np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]]))
    >>> center.tolist(), sigma.round(3).tolist()
    ([4.5], [2.965])
    """
    values = _sorted_rows(windows)
    n = values.shape[1]
    lower, upper = n // 4, (3 * n) // 4
    center = _middle(values)
    sigma = (values[:, upper] - values[:, lower]) / IQR_TO_SIGMA
    nan_rows = np.isnan(values[:, -1])  # sorting puts NaN last
    return np.where(nan_rows, np.nan, center), np.where(nan_rows, np.nan, sigma)


def median_only(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise median (the scale is not needed: NaN); NaN rows -> NaN."""
    values = _sorted_rows(windows)
    return np.where(np.isnan(values[:, -1]), np.nan, _middle(values)), np.full(len(values), np.nan)


def traded_level(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise median of the positive values (a thin market's minutes that traded); NaN where a row has none or NaN.

    >>> traded_level(np.array([[0.0, 0.0, 0.0, 2.0, 4.0, 9.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]))[0].tolist()
    [4.0, nan]
    """
    values = _sorted_rows(windows)
    n = values.shape[1]
    rows = np.arange(len(values))
    zeros = (values <= 0).sum(axis=1)  # they sort first; NaN compares False and sorts last
    traded = n - zeros
    low = np.minimum(zeros + (traded - 1) // 2, n - 1)
    high = np.minimum(zeros + traded // 2, n - 1)
    center = (values[rows, low] + values[rows, high]) / 2
    return np.where(np.isnan(values[:, -1]) | (traded == 0), np.nan, center), np.full(len(values), np.nan)


def median_upper_spread(windows: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise median and how far the ``quantile`` lies above it (e.g. 0.99: the busiest 1 % of the window);
    NaN rows -> NaN.

    >>> center, spread = median_upper_spread(np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0]]), 0.9)
    >>> center.tolist(), spread.tolist()
    ([4.5], [3.5])
    """
    values = _sorted_rows(windows)
    center, n = _middle(values), values.shape[1]
    upper = values[:, min(n - 1, int(quantile * (n - 1)))]
    nan_rows = np.isnan(values[:, -1])
    return np.where(nan_rows, np.nan, center), np.where(nan_rows, np.nan, upper - center)


def _middle(values: np.ndarray) -> np.ndarray:
    """The median of each row of already sorted ``values``."""
    n = values.shape[1]
    return (values[:, (n - 1) // 2] + values[:, n // 2]) / 2


def _sorted_rows(windows: np.ndarray) -> np.ndarray:
    """A sorted copy of each row: NumPy's vectorised sort is 2.5-6x faster here than a partial sort
    (``partition``) at the two to four positions the statistics need."""
    values = np.array(windows)
    values.sort(axis=1)
    return values


def root_mean_square(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise root mean square as the scale around 0.

    >>> root_mean_square(np.array([[3.0, -4.0]]))
    (array([0.]), array([3.53553391]))
    """
    return np.zeros(len(windows)), np.sqrt(np.mean(windows * windows, axis=1))


class Segments:
    """How one array holds several symbols' values end to end: ``counts[i]`` values of symbol ``i``, in order.

    A state bucket's candles, its symbols' state tails and a single symbol's series (one
    segment) all travel this way, so every computation is one NumPy pass whatever the
    number of symbols.

    >>> segments = Segments([2, 0, 3])
    >>> segments.ids.tolist(), segments.ranks.tolist(), segments.starts.tolist()
    ([0, 0, 2, 2, 2], [0, 1, 0, 1, 2], [0, 2, 2])
    """

    def __init__(self, counts):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.ends = np.cumsum(self.counts)
        self.starts = self.ends - self.counts

    @cached_property
    def ids(self) -> np.ndarray:
        """Each value's symbol."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    @cached_property
    def ranks(self) -> np.ndarray:
        """Each value's index within its symbol."""
        return np.arange(len(self.ids)) - self.starts[self.ids]

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def one(cls, length: int) -> "Segments":
        return cls([length])


class Tails:
    """Each symbol's recent values (a detector's memory), end to end: ``values`` split by ``segments``.

    >>> tails = Tails.of([np.array([1.0, 2.0]), np.array([])])
    >>> merged = tails.merged(np.array([3.0, 4.0, 5.0]), Segments([1, 2]))
    >>> merged.values.tolist(), merged.segments.counts.tolist()
    ([1.0, 2.0, 3.0, 4.0, 5.0], [3, 2])
    >>> merged.last(2).values.tolist()
    [2.0, 3.0, 4.0, 5.0]
    """

    def __init__(self, values: np.ndarray, segments: Segments):
        self.values, self.segments = values, segments

    @classmethod
    def of(cls, arrays: list[np.ndarray]) -> "Tails":
        return cls(np.concatenate(arrays) if arrays else np.empty(0), Segments([len(a) for a in arrays]))

    @classmethod
    def empty(cls, symbols: int) -> "Tails":
        return cls(np.empty(0), Segments(np.zeros(symbols, dtype=np.int64)))

    def merged(self, values: np.ndarray, segments: Segments) -> "Tails":
        """Each symbol's tail followed by its new ``values``."""
        if len(segments) == 1:
            return Tails(np.concatenate([self.values, values]), Segments([len(self.values) + len(values)]))
        merged = Segments(self.segments.counts + segments.counts)
        out = np.empty(len(self.values) + len(values))
        out[merged.starts[self.segments.ids] + self.segments.ranks] = self.values
        out[merged.starts[segments.ids] + self.segments.counts[segments.ids] + segments.ranks] = values
        return Tails(out, merged)

    def last(self, keep: int) -> "Tails":
        """Each symbol's last ``keep`` values."""
        if len(self.segments) == 1:
            return Tails(self.values[len(self.values) - min(len(self.values), keep):],
                         Segments([min(len(self.values), keep)]))
        kept = self.segments.ranks >= self.segments.counts[self.segments.ids] - keep
        return Tails(self.values[kept], Segments(np.minimum(self.segments.counts, keep)))


class RollingStats:
    """A statistic of the last ``window`` values, refreshed every ``refresh`` values; state is a short tail.

    ``baselines(values, segments)`` gives, for each new value, the statistic over the
    ``window`` values of its symbol ending ``guard`` values before its refresh point (NaN
    until they are known); ``learn(values, segments)`` then appends them. The guard band
    (as in radar CFAR detectors) keeps an event's first minutes out of its own baseline,
    so they cannot mask each other. State: ``tail`` (``Tails``) and ``seen`` (values per symbol).

    >>> stats = RollingStats(window=3, refresh=2, statistic=median_iqr)
    >>> center, scale = stats.baselines(np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), Segments.one(6))
    >>> center.tolist()
    [nan, nan, nan, nan, 3.0, 3.0]
    >>> stats.learn(np.array([1.0, 2.0, 3.0]), Segments.one(3))
    >>> stats.baselines(np.array([10.0, 20.0, 30.0]), Segments.one(3))[0].tolist()  # the same, chunked
    [nan, 3.0, 3.0]
    """

    def __init__(self, window: int, refresh: int, statistic: Statistic, guard: int = 0):
        self.window, self.refresh, self.statistic, self.guard = window, refresh, statistic, guard
        self.tail = Tails.empty(1)
        self.seen = np.zeros(1, dtype=np.int64)

    def baselines(self, values: np.ndarray, segments: Segments) -> tuple[np.ndarray, np.ndarray]:
        positions = self.seen[segments.ids] + segments.ranks
        return self.baselines_at(values, segments, positions - positions % self.refresh - self.guard, segments.ids)

    def baselines_at(self, values: np.ndarray, segments: Segments, refresh_points: np.ndarray,
                     point_symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The statistic over the ``window`` values of symbol ``point_symbols[i]`` before ``refresh_points[i]``
        (absolute positions in that symbol's series).

        Points may refer to the tail or to ``values`` (the new values, not yet learned).
        """
        history = self.tail.merged(values, segments)
        offsets = refresh_points - (self.seen - self.tail.segments.counts)[point_symbols]  # within the history
        ready = ((refresh_points >= self.window) & (offsets >= self.window)
                 & (offsets <= history.segments.counts[point_symbols]))
        center = np.full(len(refresh_points), np.nan)
        scale = np.full(len(refresh_points), np.nan)
        if ready.any():
            starts, inverse = np.unique((history.segments.starts[point_symbols] + offsets - self.window)[ready],
                                        return_inverse=True)
            found = self.statistic(sliding_window_view(history.values, self.window)[starts])
            center[ready], scale[ready] = found[0][inverse], found[1][inverse]
        return center, scale

    def learn(self, values: np.ndarray, segments: Segments) -> None:
        self.tail = self.tail.merged(values, segments).last(self.window + self.refresh + self.guard)
        self.seen = self.seen + segments.counts

    def state(self) -> dict[str, object]:
        return {"tail": self.tail, "seen": self.seen}

    def restore(self, state) -> None:
        """From a ``state.BucketState`` (read at this statistic's prefix)."""
        self.tail, self.seen = state.tails("tail"), state.scalars("seen", 0).astype(np.int64)


def trailing_windows(previous: Tails, values: np.ndarray, segments: Segments, window: int) -> np.ndarray:
    """For each new value, the ``window`` values of its symbol ending with it (rows with NaN where history is short).

    >>> trailing_windows(Tails.of([np.array([1.0])]), np.array([2.0, 3.0]), Segments.one(2), 2).tolist()
    [[1.0, 2.0], [2.0, 3.0]]
    """
    if len(segments) == 1:
        kept = previous.values[len(previous.values) - min(len(previous.values), window - 1):]
        return windows_at(np.concatenate([np.full(window - 1 - len(kept), np.nan), kept, values]), window)
    kept = previous.last(window - 1)
    padding = window - 1 - kept.segments.counts  # every symbol's history then starts window - 1 values early
    history = Tails(np.full(padding.sum(), np.nan), Segments(padding)).merged(kept.values, kept.segments)
    history = history.merged(values, segments)
    return sliding_window_view(history.values, window)[history.segments.starts[segments.ids] + segments.ranks]


FEW_WINDOWS = 32  # up to this many, gathering by index beats building a strided view (a stream's small chunks)


def windows_at(values: np.ndarray, window: int, starts: np.ndarray | None = None) -> np.ndarray:
    """The rows ``values[start:start + window]`` for each of ``starts`` (default: every window), as one 2-D array.

    >>> windows_at(np.arange(5.0), 2, np.array([0, 3])).tolist()
    [[0.0, 1.0], [3.0, 4.0]]
    """
    count = len(values) - window + 1 if starts is None else len(starts)
    if count <= FEW_WINDOWS:
        return values[(np.arange(count) if starts is None else starts)[:, None] + np.arange(window)]
    every = sliding_window_view(values, window)  # a view: no copy of the long series
    return every if starts is None else every[starts]


@dataclass
class CandleFeatures:
    """Features of new candles that need at most the previous candle (kept in the state)."""

    close: np.ndarray
    log_return: np.ndarray
    return_pct: np.ndarray
    range_pct: np.ndarray
    log_range: np.ndarray
    volume: np.ndarray
    volume_change: np.ndarray
    taker_buy_share: np.ndarray
    trades: np.ndarray       # the candle's number of trades (NaN: the candles carry no count)
    tick_return: np.ndarray  # the symbol's tick as a share of the previous price (NaN: no step seen yet)
    min_step: np.ndarray     # the smallest price step the symbol has shown up to this candle (the state's)

    @classmethod
    def of(cls, **arrays: np.ndarray) -> "CandleFeatures":
        """Features from some arrays, the rest NaN: for examples and tests."""
        missing = np.full(len(next(iter(arrays.values()))), np.nan)
        return cls(**{**{name: missing for name in cls.__dataclass_fields__}, **arrays})


def candle_features(candles, segments: Segments, last_open_time: np.ndarray, last_close: np.ndarray,
                    last_volume: np.ndarray, interval_ms: int, range_floor_pct: float,
                    last_step: np.ndarray | None = None) -> CandleFeatures:
    """Features of ``candles`` (columns by name: a DataFrame or arrays), each symbol's new candles in time order
    (``segments``), given each symbol's last processed candle (NaN/-1 when none) and its smallest price step so
    far (``last_step``, NaN when none).

    >>> frame = pd.DataFrame({"open_time": [0, 60_000, 180_000], "open": [100.0, 101.0, 99.0],
    ...                       "high": [101.0, 102.0, 99.5], "low": [99.0, 100.5, 98.0],
    ...                       "close": [101.0, 102.0, 99.0], "volume": [2.0, 4.0, 1.0]})
    >>> f = candle_features(frame, Segments.one(3), np.array([-1]), np.array([np.nan]), np.array([np.nan]),
    ...                     60_000, 0.001)
    >>> np.round(f.return_pct, 4).tolist()  # first and after a gap: open-to-close
    [1.0, 0.9901, 0.0]
    >>> np.round(f.range_pct, 4).tolist(), f.volume_change.tolist()
    ([2.0, 1.4851, 1.5152], [nan, 1.0, nan])
    >>> f.min_step.tolist(), np.round(f.tick_return, 5).tolist()  # steps of 1.0, then 0.5 (101 - 100.5)
    ([1.0, 0.5, 0.5], [0.01, 0.00495, 0.00505])
    >>> known = candle_features(frame.assign(tick_size=0.1), Segments.one(3), np.array([-1]), np.array([np.nan]),
    ...                         np.array([np.nan]), 60_000, 0.001)
    >>> known.min_step.tolist()  # the exchange's tick, when the candles carry it
    [0.1, 0.1, 0.1]
    """
    open_time = np.asarray(candles["open_time"], dtype=np.int64)
    open_, high, low, close = (np.asarray(candles[name], dtype=float) for name in ("open", "high", "low", "close"))
    volume = np.asarray(candles["volume"], dtype=float)
    symbols = len(segments)
    last_step = np.full(symbols, np.nan) if last_step is None else last_step
    previous_close = _previous(close, last_close, segments)
    steps = price_steps(open_, high, low, close, previous_close)
    if "tick_size" in candles:  # the exchange's price step (missing: NaN) is known before any step is seen
        steps = np.fmin(steps, np.asarray(candles["tick_size"], dtype=float))
    min_step = running_minimum(steps, segments, last_step)
    consecutive = (open_time - _previous(open_time, last_open_time, segments) == interval_ms) & np.isfinite(
        previous_close)
    reference = np.where(consecutive, previous_close, open_)
    log_return = np.log(close / reference)
    tick_return = min_step / reference
    range_pct = (high - low) / open_ * 100
    previous_volume = _previous(volume, last_volume, segments)
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_change = np.where(consecutive & (previous_volume > 0), volume / previous_volume - 1, np.nan)
        taker = (np.asarray(candles["taker_buy_base"], dtype=float) / volume if "taker_buy_base" in candles
                 else np.full(len(close), np.nan))
    trades = np.asarray(candles["trades"], dtype=float) if "trades" in candles else np.full(len(close), np.nan)
    return CandleFeatures(
        close=close, log_return=log_return, return_pct=np.expm1(log_return) * 100, range_pct=range_pct,
        log_range=np.log(np.fmax(np.maximum(range_pct, range_floor_pct), tick_return * 100)), volume=volume,
        volume_change=volume_change, taker_buy_share=taker, trades=trades, tick_return=tick_return, min_step=min_step,
    )


STEP_RESOLUTION = 1e-9  # differences below this share of the price are float noise, not a price step


def price_steps(open_, high, low, close, previous_close) -> np.ndarray:
    """Each candle's smallest positive price difference (between its prices and the previous close); NaN if none.

    >>> price_steps(*(np.array([v]) for v in (10.0, 10.3, 9.9, 10.1, 10.0))).round(6).tolist()
    [0.1]
    """
    prices = np.column_stack([open_, high, low, close, previous_close])
    prices.sort(axis=1)
    steps = np.diff(prices, axis=1)
    steps[~(steps > STEP_RESOLUTION * np.abs(prices[:, 1:]))] = np.inf  # NaN (no previous close) too
    smallest = steps.min(axis=1)
    return np.where(np.isfinite(smallest), smallest, np.nan)


def running_minimum(values: np.ndarray, segments: Segments, start: np.ndarray) -> np.ndarray:
    """Per symbol, the minimum of ``start`` and its values up to each one (NaN ignored; NaN until one is known).

    >>> running_minimum(np.array([3.0, np.nan, 1.0, 5.0, 4.0]), Segments([3, 2]), np.array([2.0, np.nan])).tolist()
    [2.0, 2.0, 1.0, 5.0, 4.0]
    """
    filled = np.where(np.isnan(values), np.inf, values)
    out = filled.copy()
    for symbol in np.flatnonzero(segments.counts > 1):  # exact per segment (no offset tricks that round)
        begin, end = segments.starts[symbol], segments.ends[symbol]
        out[begin:end] = np.minimum.accumulate(filled[begin:end])
    out = np.fmin(out, start[segments.ids])
    return np.where(np.isfinite(out), out, np.nan)


def _previous(values: np.ndarray, last: np.ndarray, segments: Segments) -> np.ndarray:
    """Each value's predecessor in its symbol's series: the one before it, or ``last`` of the symbol for its first."""
    previous = np.empty_like(values)
    previous[1:] = values[:-1]
    present = segments.counts > 0
    previous[segments.starts[present]] = last[present]
    return previous
