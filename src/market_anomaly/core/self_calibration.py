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
    """The histograms and mappings of a call's symbols: ``calibrated`` (which learns the candles), state as arrays."""

    def __init__(self, params, symbols: int):
        self.params = params
        self.pooled = np.asarray(params.pooled, dtype=float).reshape(len(params.pooled), len(LEVELS))
        # the prior's tail share at each level, never thinner than a calibrated surprise's own 10**-s
        self.prior_tail = np.maximum(np.cumsum(self.pooled[:, ::-1], axis=1)[:, ::-1], 10.0 ** -LEVELS)
        self.counts = np.zeros((symbols, *self.pooled.shape))  # own candles so far (faded at block ends)
        self.mapping = np.tile(LEVELS, (symbols, len(self.pooled), 1))  # own surprise at each level, this block
        self.decay = 0.5 ** (params.refresh / (params.half_life_days * MINUTES_PER_DAY))

    def _refreshed(self, symbols: np.ndarray) -> np.ndarray:
        """The symbols' mappings from their counts: -log10 of the blended share at or above each level."""
        counts, prior = self.counts[symbols], self.params.prior_candles
        own_tail = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]
        share = (prior * self.prior_tail + own_tail) / (prior + counts.sum(axis=-1, keepdims=True))
        own = -np.log10(share)
        return np.clip(own, LEVELS - self.params.max_shift, LEVELS - self.params.min_shift)

    def calibrated(self, surprise: np.ndarray, positions: np.ndarray, segments) -> np.ndarray:
        """Each candle's group surprises (n x groups, pooled) on its symbol's own scale (``positions``: candles
        its symbol saw before it, each symbol's contiguous; ``segments`` as in ``features``); learns them.
        Without a pooled histogram (before ``train``): unchanged."""
        if not len(self.pooled) or not len(positions):
            return surprise
        refresh, params = self.params.refresh, self.params
        blocks = positions // refresh
        local = blocks - blocks[segments.starts[segments.ids]]  # the k-th block of its symbol in this call
        result = np.empty_like(surprise)
        cell = bins(surprise)
        within = (np.nan_to_num(surprise) - LEVELS[cell]) / STEP  # position inside the bin, for interpolation
        groups = np.arange(len(self.pooled))
        for k in range(int(local.max()) + 1):  # one pass per block rank, every symbol at once
            rows = np.flatnonzero(local == k)
            ids = segments.ids[rows]
            symbols, first = np.unique(ids, return_index=True)
            opening = symbols[positions[rows[first]] % refresh == 0]  # a new block: mapping from all before it
            if len(opening):
                self.mapping[opening] = self._refreshed(opening)
            low = self.mapping[ids[:, None], groups, cell[rows]]
            upper = np.minimum(cell[rows] + 1, len(LEVELS) - 1)
            high = np.where(cell[rows] + 1 < len(LEVELS), self.mapping[ids[:, None], groups, upper], low + STEP)
            result[rows] = low + within[rows] * (high - low)
            counted = rows[positions[rows] >= params.warmup]
            for group in groups:
                np.add.at(self.counts, (segments.ids[counted], group, cell[counted, group]), 1.0)
            closing = np.unique(ids[positions[rows] % refresh == refresh - 1])  # a finished block: older counts fade
            self.counts[closing] *= self.decay
        return np.where(np.isnan(surprise), surprise, result)

    def state(self) -> dict[str, np.ndarray]:
        if not len(self.pooled):
            return {}
        return {"counts": self.counts.reshape(len(self.counts), -1), "mapping": self.mapping.reshape(len(self.counts), -1)}

    def restore(self, state) -> None:
        """From a ``state.BucketState`` at this component's prefix; a symbol without (or with another layout of)
        histograms starts from the prior alone."""
        size = self.pooled.size
        for index, memory in enumerate(state.memories):
            counts = memory.get(state.prefix + "counts")
            if counts is not None and counts.size == size and size:
                self.counts[index] = counts.reshape(self.pooled.shape)
                self.mapping[index] = memory[state.prefix + "mapping"].reshape(self.pooled.shape)
