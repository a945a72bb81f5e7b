"""Price quantisation: the exchange's tick size, and the floors it puts under the shared baselines.

On a thin market prices move in whole ticks (a one-tick move can be 0.5-1 % of the price) and
most minutes have no trade: the median return, range and volume of an hour are all 0, so
baselines built on them call every one-tick move or single trade a many-sigma event. Here
the tick is known (a ``tick_size`` column, e.g. ``exchangeInfo``'s ``PRICE_FILTER``) or
inferred (the smallest price step the symbol has shown so far, kept in its state), and
(``baselines``):

- the return scale is at least ``quantisation.ticks_per_sigma`` ticks (``return_floor``), and
  at least the typical size of the minutes that moved (``features.median_iqr_active``): a
  one-tick move is never more than ``1 / ticks_per_sigma`` sigma;
- a candle's range is at least one tick, so range ratios count ticks;
- the volume baseline is the median of the minutes that traded (``features.median_nonzero``),
  so a single trade after silence is judged against the usual size of a trade-minute.

On liquid markets (BTCUSDT: a tick is 1e-7 of the price) none of these floors binds.

>>> from market_anomaly.core.features import Segments
>>> candles = {"open": np.array([1.00e-6, 1.02e-6]), "high": np.array([1.02e-6, 1.02e-6]),
...            "low": np.array([1.00e-6, 1.01e-6]), "close": np.array([1.02e-6, 1.01e-6])}
>>> ticks, last = price_ticks(candles, Segments.one(2), np.array([np.nan]), np.array([np.inf]))
>>> (ticks * 1e8).round(6).tolist(), (last * 1e8).round(6).tolist()  # steps of 1e-8 from the 2nd candle
([2.0, 1.0], [1.0])
"""

from __future__ import annotations

import numpy as np

from market_anomaly.core.features import Segments

RELATIVE_NOISE = 1e-9  # price differences below this share of the price are float noise, not a step
_NO_STEP = 1e300       # "no step seen yet" inside the segmented running minimum


def price_ticks(candles, segments: Segments, last_close: np.ndarray, last_tick: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(tick size in price units at each candle, each symbol's inferred tick to keep in its state).

    The ``tick_size`` column wins where given (> 0); elsewhere the tick is the smallest positive
    price step (close to close, high to low, open to close, the upper wick) the symbol has shown
    up to and including the candle (``last_tick``, per symbol, from the state; ``inf`` until a step
    was seen).
    """
    open_, high, low, close = (np.asarray(candles[name], dtype=float) for name in ("open", "high", "low", "close"))
    previous = np.empty_like(close)
    previous[1:] = close[:-1]
    present = segments.counts > 0
    previous[segments.starts[present]] = last_close[present]
    steps = np.abs(np.column_stack([close - previous, high - low, close - open_, high - np.maximum(open_, close)]))
    with np.errstate(invalid="ignore"):
        steps = np.where(steps > RELATIVE_NOISE * close[:, None], steps, _NO_STEP).min(axis=1)
    seeded = np.minimum(steps, np.where(np.isfinite(last_tick), last_tick, _NO_STEP)[segments.ids])
    inferred = _running_minimum(seeded, segments)
    inferred = np.where(inferred >= _NO_STEP, np.inf, inferred)  # (exact: only minima are taken)
    kept = last_tick.astype(float).copy()
    kept[present] = inferred[segments.ends[present] - 1]
    if "tick_size" in candles:
        known = np.asarray(candles["tick_size"], dtype=float)
        with np.errstate(invalid="ignore"):
            return np.where(known > 0, known, inferred), kept
    return inferred, kept


def _running_minimum(values: np.ndarray, segments: Segments) -> np.ndarray:
    """The minimum so far within each symbol's segment, exactly (a doubling scan: log2 of the longest segment
    NumPy passes, no loop over symbols)."""
    if len(segments) == 1:
        return np.minimum.accumulate(values)
    result, span = values.copy(), 1
    while span < segments.counts.max(initial=0):
        earlier = np.full(len(result), np.inf)
        earlier[span:] = result[:-span]
        result = np.where(segments.ranks >= span, np.minimum(result, earlier), result)
        span *= 2
    return result


def relative_tick(ticks: np.ndarray, close: np.ndarray) -> np.ndarray:
    """The tick as a share of the price (0 while unknown)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(ticks) & (close > 0), ticks / close, 0.0)


def return_floor(min_sigma: float, tick_share: np.ndarray, ticks_per_sigma: float) -> np.ndarray:
    """The smallest log-return scale per candle: ``min_sigma`` (a log return) or ``ticks_per_sigma`` ticks, the
    larger (an unknown tick share, NaN, counts as 0)."""
    return np.fmax(min_sigma, ticks_per_sigma * tick_share)
