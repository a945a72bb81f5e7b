"""Labelled anomalies injected into real candles, for evaluation and the exchange simulator.

Every kind is sized against the series' own recent behaviour (the ``LOOKBACK`` candles
before the event): a price spike is a multiple of the standard deviation of recent
1-minute log returns, a volume burst a multiple of the recent median volume of the minutes
that traded (``traded_median_volume``), and so on.
Prices are changed through a multiplicative *price factor* per candle, so the injected
series stays a valid candle series: each open equals the previous close times the
previous factor, high/low keep their original wicks around the new body, and candles
after the event continue from the level the kind implies (a spike reverts, a flash
crash recovers partly, a volatility burst leaves the price where the burst took it, a
pump-and-dump returns to where it started). Volume-like columns (``quote_volume``,
``trades``, ``taker_buy_base``, ``taker_buy_quote``) are scaled with ``volume`` so
their ratios stay plausible; a minute without trades that an event gives volume gets
the other columns in the proportions of the last minute that traded.

Definitions are anomalies *by construction*, measured against the untouched data's own
behaviour (the training halves of the three ``../shared/data/binance`` 1-minute series):

- ``volume_burst`` lasts 3-5 candles (it was 1-3). A single minute at 8-19x the hourly
  median volume happens 3.5-14 times a day on these markets, so a one-minute burst of
  that size is an ordinary minute, not an anomaly; sustained over 3 minutes with the price
  untouched (volume the range does not explain) it happens at most 0.3 times a day at 8x.
- ``volatility_burst`` is 6-12x the recent return standard deviation (it was 4-8x), and
  every 5 candles of the burst have that realized size (the draws are rescaled block by
  block; before, a burst's first minutes could by chance be calm). The realized
  volatility of 5 minutes over the previous hour's standard deviation exceeds 4 on 7-9
  minutes a day; its 99.9th percentile is 4.9-5.0 on BTCUSDT/ETHUSDT 2026 and 9.3 on
  BTCUSDT 2019-10 (a month with +40 % days). So 4-8x was a busy market, not an anomaly;
  6-12x is beyond the 99.9th percentile on two of the series and inside the tail of the third.
- the other kinds are unchanged.
- volume is sized against the minutes that traded (it was the median of all recent
  minutes). On a thin pair most minutes have no trade, so that median was 0 and an event
  asked for 30 times nothing: 38 of 54 volume bursts injected into the thin BTC pairs of
  ``../shared/data/pumps-2020`` changed no candle, and their price spikes and crashes moved
  the price on no volume, which no exchange prints. On liquid pairs, where every minute
  trades, the two medians are the same.

>>> import numpy as np, pandas as pd
>>> candles = pd.DataFrame({"open_time": np.arange(200) * 60_000, "open": 100.0, "high": 100.1,
...                         "low": 99.9, "close": 100.0, "volume": 5.0})
>>> injected, label = inject(candles, "flash_crash", 120, np.random.default_rng(0), magnitude=0.05)
>>> label["kind"], label["open_time"] == 120 * 60_000, bool(injected["low"].min() <= 95.0)
('flash_crash', True, True)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("price_spike", "volume_burst", "volatility_burst", "flash_crash", "pump_and_dump")
LOOKBACK = 60  # candles that define "recent" volatility and volume
MIN_HISTORY = 10  # fewer candles before the event than this and "recent" means nothing
VOLUME_LIKE = ("quote_volume", "trades", "taker_buy_base", "taker_buy_quote")
VOLUME_VOLATILITY_ELASTICITY = 1.1  # measured on ../shared/data/binance 1m files (1.0-1.3 per series)
VOLUME_BURST_CANDLES = (3, 5)  # a volume burst is sustained: one heavy minute is ordinary (see the module notes)
BURST_BLOCK = 5  # a volatility burst has its stated size in every 5 candles (see the module notes)

# Default magnitude ranges per kind (drawn uniformly unless ``magnitude`` is given).
MAGNITUDE_RANGES = {
    "price_spike": (6.0, 12.0),       # sigmas of recent 1-minute log returns
    "volume_burst": (8.0, 30.0),      # multiples of the recent median volume
    "volatility_burst": (6.0, 12.0),  # multiples of the recent return standard deviation (see the module notes)
    "flash_crash": (0.03, 0.08),      # fractional drop
    "pump_and_dump": (0.04, 0.10),    # fractional rise before the dump
}


def inject(candles: pd.DataFrame, kind: str, at: int, rng: np.random.Generator,
           magnitude: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Return a copy of ``candles`` (sorted by ``open_time``) with one anomaly of ``kind`` starting at row ``at``.

    The label is ``{"kind", "open_time", "end_time", "magnitude"}``: times (ms) of the first
    and last candle the event changed; ``magnitude`` in the unit of ``MAGNITUDE_RANGES``.
    Events longer than the rows left after ``at`` are cut at the end of the frame.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not MIN_HISTORY <= at < len(candles):
        raise ValueError(f"row {at} leaves fewer than {MIN_HISTORY} candles of history or is past the end "
                         f"({len(candles)} candles)")
    frame = candles.sort_values("open_time", kind="stable").reset_index(drop=True).copy()
    if magnitude is None:
        magnitude = float(rng.uniform(*MAGNITUDE_RANGES[kind]))
    recent = frame.iloc[max(0, at - LOOKBACK):at]
    sigma = float(np.std(np.diff(np.log(recent["close"].to_numpy(float))))) or 1e-4
    volume = frame["volume"].to_numpy(float)
    price_factor, volume_target = _SHAPES[kind](len(frame) - at, magnitude, sigma,
                                                traded_median_volume(volume[:at]), rng)
    new_volume = np.maximum(volume[at:], volume_target)  # an event adds volume, never takes it away
    # A level shift (crash, burst) changes every later candle; the label ends where the event's shape ends.
    last = at + _event_length(price_factor, new_volume != volume[at:]) - 1
    _apply(frame, at, price_factor, new_volume)
    label = {"kind": kind, "open_time": int(frame["open_time"].iat[at]),
             "end_time": int(frame["open_time"].iat[last]), "magnitude": magnitude}
    return frame, label


def traded_median_volume(before: np.ndarray) -> float:
    """The median volume of the minutes that traded among the last ``LOOKBACK`` (of the last ``LOOKBACK`` that
    traded when none did), what an event's volume is a multiple of; 1e-9 for a series that never traded.

    >>> traded_median_volume(np.array([7.0, 0.0, 0.0, 2.0, 0.0, 4.0]))
    4.0
    """
    traded = before[-LOOKBACK:]
    traded = traded[traded > 0]
    if not len(traded):
        traded = before[before > 0][-LOOKBACK:]
    return float(np.median(traded)) if len(traded) else 1e-9


def inject_random(frame_by_symbol: dict[str, pd.DataFrame], count: int, rng: np.random.Generator,
                  kinds: tuple[str, ...] = KINDS, min_gap: int = 240, earliest: int | dict[str, int] = LOOKBACK
                  ) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """Inject ``count`` events, kinds in turn, at random rows at least ``min_gap`` candles apart per symbol.

    ``earliest`` is the first row an event may start at (e.g. the start of a held-out part),
    for all symbols or per symbol.
    Labels gain a ``"symbol"`` key. Raises ``ValueError`` when the frames cannot hold that many events.
    """
    frames = {symbol: frame.sort_values("open_time", kind="stable").reset_index(drop=True)
              for symbol, frame in frame_by_symbol.items()}
    slots = injection_slots(frames, min_gap, earliest)
    if count > len(slots):
        raise ValueError(f"{count} events do not fit {min_gap} candles apart ({len(slots)} slots)")
    labels = []
    for number, slot in enumerate(sorted(rng.choice(len(slots), size=count, replace=False))):
        symbol, row = slots[slot]
        jitter = int(rng.integers(-min_gap // 4, min_gap // 4 + 1))
        frames[symbol], label = inject(frames[symbol], kinds[number % len(kinds)], row + jitter, rng)
        labels.append({"symbol": symbol, **label})
    return frames, labels


def injection_slots(frames: dict[str, pd.DataFrame], min_gap: int, earliest: int | dict[str, int]
                    ) -> list[tuple[str, int]]:
    """(symbol, row) places for events: 1.5 gaps apart, so with a quarter-gap jitter they stay ``min_gap`` apart."""
    spacing = min_gap * 3 // 2
    return [(symbol, row) for symbol, frame in frames.items()
            for row in range(max(earliest[symbol] if isinstance(earliest, dict) else earliest, MIN_HISTORY)
                             + min_gap // 4, len(frame) - spacing, spacing)]


# -- shapes: (candles available, magnitude, sigma, median volume, rng) -> per-candle price factors and the
# -- volume each candle trades at least (0: its own) -----------------------------------------------------------


def _price_spike(n, magnitude, sigma, median_volume, rng):
    """One candle jumps by ``magnitude`` sigmas (either way) and the next returns to the path."""
    price = np.ones(n)
    price[0] = np.exp(rng.choice([-1, 1]) * magnitude * sigma)
    return price, _volume_target(np.array([rng.uniform(2, 5)]) * median_volume, n)


def _volume_burst(n, magnitude, sigma, median_volume, rng):
    """3-5 candles trade ``magnitude`` times the recent median volume; price is untouched (see the module notes)."""
    length = int(rng.integers(VOLUME_BURST_CANDLES[0], VOLUME_BURST_CANDLES[1] + 1))
    return np.ones(n), _volume_target(np.full(length, magnitude * median_volume), n)


def _volatility_burst(n, magnitude, sigma, median_volume, rng):
    """10-20 candles whose returns have ``magnitude`` times the recent standard deviation.

    Volume rises with volatility as on the real 1-minute data (elasticity about 1.1: when
    15-minute volatility is 3x its daily median, volume is 6-7x), with +-40 % noise.
    """
    length = min(n, int(rng.integers(10, 21)))
    extra = rng.normal(0.0, 1.0, length)
    for start in range(0, length, BURST_BLOCK):  # the stated size, block by block, not only on average
        block = extra[start:start + BURST_BLOCK]
        block *= np.sqrt(magnitude ** 2 - 1) * sigma / max(np.sqrt(np.mean(block * block)), 1e-12)
    price = np.concatenate([np.exp(np.cumsum(extra)), np.full(n - length, np.exp(extra.sum()))])
    volumes = magnitude ** VOLUME_VOLATILITY_ELASTICITY * rng.uniform(0.7, 1.4, length) * median_volume
    return price, _volume_target(volumes, n)


def _flash_crash(n, magnitude, sigma, median_volume, rng):
    """A drop of ``magnitude`` over 1-3 candles, then 30-80 % of it recovered over 5-20 candles."""
    fall, rise = int(rng.integers(1, 4)), int(rng.integers(5, 21))
    bottom = 1 - magnitude
    settled = bottom + rng.uniform(0.3, 0.8) * magnitude
    path = np.concatenate([np.linspace(1, bottom, fall + 1)[1:], np.linspace(bottom, settled, rise + 1)[1:]])
    volumes = np.concatenate([rng.uniform(8, 25, fall), np.geomspace(6, 1.5, rise)]) * median_volume
    return _level_path(path, n), _volume_target(volumes, n)


def _pump_and_dump(n, magnitude, sigma, median_volume, rng):
    """A steady rise of ``magnitude`` over 5-15 candles on 3-10x volume, then a dump back over 2-5 candles."""
    pump, dump = int(rng.integers(5, 16)), int(rng.integers(2, 6))
    rise = (1 + magnitude) ** (np.arange(1, pump + 1) / pump)
    path = np.concatenate([rise, np.linspace(1 + magnitude, 1, dump + 1)[1:]])
    volumes = np.concatenate([np.linspace(3, 10, pump), rng.uniform(6, 15, dump)]) * median_volume
    return _level_path(path, n), _volume_target(volumes, n)


_SHAPES = {"price_spike": _price_spike, "volume_burst": _volume_burst, "volatility_burst": _volatility_burst,
           "flash_crash": _flash_crash, "pump_and_dump": _pump_and_dump}


def _level_path(path: np.ndarray, n: int) -> np.ndarray:
    """``path`` for the event's candles, then its last level for every later candle."""
    return np.concatenate([path, np.full(max(0, n - len(path)), path[-1])])[:n]


def _volume_target(target: np.ndarray, n: int) -> np.ndarray:
    """``target`` for the event's first candles, 0 (their own volume) for the rest."""
    return np.concatenate([target, np.zeros(max(0, n - len(target)))])[:n]


def _event_length(price_factor: np.ndarray, volume_changed: np.ndarray) -> int:
    """Candles until the price factor has stopped changing and the volume is the candles' own again."""
    changing = (np.abs(np.diff(price_factor, prepend=1.0)) > 1e-12) | volume_changed
    return int(np.flatnonzero(changing).max(initial=0)) + 1


def _apply(frame: pd.DataFrame, at: int, price_factor: np.ndarray, new_volume: np.ndarray) -> None:
    """Scale prices and set volumes from row ``at`` on, in place, keeping every candle's OHLC consistent."""
    o, h, l, c = (frame[name].to_numpy(float)[at:] for name in ("open", "high", "low", "close"))
    open_factor = np.concatenate([[1.0], price_factor[:-1]])  # a candle opens where the previous one closed
    new_open, new_close = o * open_factor, c * price_factor
    wick_up = (h - np.maximum(o, c)) / c
    wick_down = (np.minimum(o, c) - l) / c
    # Bigger moves come with proportionally longer wicks (up to 3x), like real candles around them.
    move = np.abs(np.log(new_close / new_open))
    wick_scale = np.clip(move / np.maximum(np.abs(np.log(c / o)), 1e-4), 1.0, 3.0)
    top, bottom = np.maximum(new_open, new_close), np.minimum(new_open, new_close)
    new_prices = {"open": new_open, "close": new_close, "high": top * (1 + wick_up * wick_scale),
                  "low": bottom * (1 - np.minimum(wick_down * wick_scale, 0.5))}
    volume = frame["volume"].to_numpy(float)
    old_volume = volume[at:]
    # A minute that did not trade has no proportions of its own: it takes those of the last minute that did.
    traded = np.flatnonzero(volume > 0)
    reference = np.maximum.accumulate(np.where(volume > 0, np.arange(len(volume)), -1))
    reference = np.where(reference >= 0, reference, traded[0] if len(traded) else 0)[at:]
    source = np.where(old_volume > 0, np.arange(at, len(volume)), reference)
    volume_factor = new_volume / np.maximum(volume[source], 1e-300)
    source_price = frame["close"].to_numpy(float)[source] + frame["open"].to_numpy(float)[source]
    price_ratio = (new_close + new_open) / np.maximum(source_price, 1e-12)
    for name in ("open", "high", "low", "close", "volume", *VOLUME_LIKE):
        if name not in frame.columns:
            continue
        column = frame[name].to_numpy(float).copy()
        if name in new_prices:
            column[at:] = new_prices[name]
        elif name == "volume":
            column[at:] = new_volume
        else:
            scaled = column[source] * volume_factor * (price_ratio if name.endswith("quote") or name == "quote_volume"
                                                       else 1)
            column[at:] = np.where(new_volume > 0, scaled, column[at:])
        frame[name] = (np.maximum(np.round(column), np.where(column > 0, 1, 0)).astype(frame[name].dtype)
                       if name == "trades" else column)
