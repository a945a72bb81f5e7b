"""Per-symbol self-calibration: each detector group's surprise re-measured on the symbol's own history.

One pooled calibration does not hold a false-alarm budget on every pair: a thin BTC-quoted
pair or a jumpy altcoin scores higher on ordinary minutes than BTCUSDT does, and a 30x volume
minute that is routine on one pair is news on another. So every symbol keeps, in its state,
a histogram of each detector group's (pooled) surprise (``LEVELS``, counted from its
``warmup``-th candle), started from the pooled training histogram with the weight of
``prior_candles`` candles and updated as it trades (a REST or file seed goes through the same
path), older counts fading with ``half_life_days``. A group's surprise is then mapped to the
symbol's own: ``-log10`` of how often the symbol (blended with the prior) scores that high.
Beyond what the symbol has shown, the prior's tail (never thinner than the nominal ``10**-s``)
takes over, so an event larger than anything in its history stays rare. Consensus fuses
these per-symbol surprises, so the shipped threshold means about the same rarity on every
symbol: the alarm rate follows the false-alarm budget from each symbol's own history.

``min_shift`` and ``max_shift`` bound the mapping: a symbol's surprise is at most ``max_shift``
below and at most ``-min_shift`` above the pooled one.

Chunking, and which symbols share a call, cannot change a decision: the mapping is refreshed
every ``refresh`` candles of the symbol (by its candle count) from the histograms of all its
candles before that point.

>>> from market_anomaly.core.features import Segments
>>> from market_anomaly.core.params import SelfCalibrationParams
>>> nominal = 10.0 ** -LEVELS - 10.0 ** -(LEVELS + STEP)  # a calibrated pooled surprise: P(S >= s) = 10**-s
>>> params = SelfCalibrationParams(prior_candles=100, refresh=100, half_life_days=30.0,
...                                min_shift=-2.0, max_shift=3.0, warmup=0, pooled=(tuple(nominal / nominal.sum()),))
>>> calibration = SelfCalibration(params, symbols=1)
>>> busy = np.random.default_rng(0).exponential(1 / np.log(10), (5000, 1)) + 1.0  # one level above, every minute
>>> own = calibration.calibrated(busy, np.arange(5000), Segments.one(5000))
>>> [round(float(np.mean(own[-1000:] >= level)), 2) for level in (1.0, 2.0)]  # its own rarity again
[0.1, 0.01]
"""

from __future__ import annotations

import numpy as np

STEP = 0.25
LEVELS = np.round(np.arange(0.0, 12.0, STEP), 2)  # histogram bins' lower edges (pooled surprise)
MINUTES_PER_DAY = 1440


def histograms(surprise: np.ndarray) -> np.ndarray:
    """Counts of each column of ``surprise`` (n x k) per ``LEVELS`` bin: a (k, bins) array."""
    columns = surprise.shape[1]
    cells = np.arange(columns) * len(LEVELS) + bins(surprise)
    return np.bincount(cells.ravel(), minlength=columns * len(LEVELS)).reshape(columns, -1).astype(float)


def bins(values: np.ndarray) -> np.ndarray:
    return np.clip((np.nan_to_num(values) / STEP + 1e-9).astype(np.int64), 0, len(LEVELS) - 1)


class SelfCalibration:
    """The histograms of a call's symbols: ``calibrated`` (which learns the candles), state as arrays.

    ``counts`` holds each symbol's candles of its finished blocks (faded), ``block`` those of its
    current block (whole numbers, exact whatever the chunking); a symbol's mapping is a function
    of ``counts`` alone, so it never needs storing.
    """

    def __init__(self, params, symbols: int):
        self.params = params
        self.pooled = np.asarray(params.pooled, dtype=float).reshape(len(params.pooled), len(LEVELS))
        # the prior's tail share at each level, never thinner than a calibrated surprise's own 10**-s
        self.prior_tail = np.maximum(np.cumsum(self.pooled[:, ::-1], axis=1)[:, ::-1], 10.0 ** -LEVELS)
        self.counts = np.zeros((symbols, *self.pooled.shape))
        self.block = np.zeros((symbols, *self.pooled.shape))
        self.decay = 0.5 ** (params.refresh / (params.half_life_days * MINUTES_PER_DAY))

    def _mapping(self, symbols: np.ndarray) -> np.ndarray:
        """The symbols' own surprise at each level (symbols, groups, bins): -log10 of the blended share of their
        candles at or above it, bounded by ``min_shift``/``max_shift`` around the pooled level."""
        counts, prior = self.counts[symbols], self.params.prior_candles
        own_tail = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]
        share = (prior * self.prior_tail + own_tail) / (prior + counts.sum(axis=-1, keepdims=True))
        return np.clip(-np.log10(share), LEVELS - self.params.max_shift, LEVELS - self.params.min_shift)

    def calibrated(self, surprise: np.ndarray, positions: np.ndarray, segments) -> np.ndarray:
        """Each candle's group surprises (n x groups, pooled) on its symbol's own scale (``positions``: candles
        its symbol saw before it, each symbol's contiguous; ``segments`` as in ``features``); learns them.
        Without a pooled histogram (before ``train``): unchanged."""
        if not len(self.pooled) or not len(positions):
            return surprise
        refresh, params = self.params.refresh, self.params
        groups, width = len(self.pooled), len(LEVELS)
        symbols = len(self.counts)
        blocks = positions // refresh
        local = blocks - blocks[segments.starts[segments.ids]]  # the k-th block of its symbol in this call
        ranks = int(local.max()) + 1
        cell = bins(surprise)
        counted = positions >= params.warmup
        # every counted candle's (block rank, symbol, group, bin), added per block rank below
        index = ((local[counted, None] * symbols + segments.ids[counted, None]) * groups + np.arange(groups)) * width
        added = np.bincount((index + cell[counted]).ravel(), minlength=ranks * symbols * groups * width
                            ).reshape(ranks, symbols, groups, width)
        opens = np.zeros((ranks, symbols), dtype=bool)  # a symbol's block starting in this call
        opens[local[positions % refresh == 0], segments.ids[positions % refresh == 0]] = True
        mappings = np.empty((ranks, symbols, groups, width))
        mapping = self._mapping(np.arange(symbols))
        for k in range(ranks):  # one pass per block rank, every symbol at once
            opening = np.flatnonzero(opens[k])
            if len(opening):  # the finished block joins the (faded) history; the mapping follows it
                self.counts[opening] = (self.counts[opening] + self.block[opening]) * self.decay
                self.block[opening] = 0.0
                mapping[opening] = self._mapping(opening)
            mappings[k] = mapping
            self.block += added[k]
        flat = mappings.reshape(-1)
        start = ((local[:, None] * symbols + segments.ids[:, None]) * groups + np.arange(groups)) * width
        low = flat[start + cell]
        high = np.where(cell + 1 < width, flat[start + np.minimum(cell + 1, width - 1)], low + STEP)
        within = (np.nan_to_num(surprise) - LEVELS[cell]) / STEP  # position inside the bin
        return np.where(np.isnan(surprise), surprise, low + within * (high - low))

    def state(self) -> dict[str, np.ndarray]:
        if not len(self.pooled):
            return {}
        return {"counts": self.counts.reshape(len(self.counts), -1), "block": self.block.reshape(len(self.block), -1)}

    def restore(self, state) -> None:
        """From a ``state.BucketState`` at this component's prefix; a symbol without (or with another layout of)
        histograms starts from the prior alone."""
        size = self.pooled.size
        for index, memory in enumerate(state.memories):
            counts = memory.get(state.prefix + "counts")
            if counts is not None and counts.size == size and size:
                self.counts[index] = counts.reshape(self.pooled.shape)
                self.block[index] = memory[state.prefix + "block"].reshape(self.pooled.shape)
