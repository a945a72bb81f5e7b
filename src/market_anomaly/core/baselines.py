"""The shared baselines: computed once per call from the features and handed to every detector in a ``Context``.

Several detectors measure against the same yardsticks: the return's robust center and
scale (the z-score, and the runs detectors measure their windows from that center), the
runs' longer return scale, the volume and range levels, the 1-hour return window. These
live here, with their own state, instead of inside one detector that others would have to
call first. Their parameters stay in the sections they have always had (``return_zscore``,
``volume``, ``range``, ``runs``, ``volatility``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from market_anomaly.core.features import (CandleFeatures, RollingStats, Segments, Tails, median_iqr, median_only,
                                          traded_level, root_mean_square, trailing_windows)


@dataclass(frozen=True)
class Context:
    """What a detector may read of the new candles: one entry per candle, candles grouped by symbol (``segments``,
    each symbol's in time order), computed once per call.

    Every array is as long as the new candles. NaN means "not known yet" (a baseline still
    warming up); a detector's score is NaN there too.
    """

    segments: Segments          # how many of the candles belong to each symbol of the call
    positions: np.ndarray       # candles the symbol had seen before each one (0 for its first ever)
    features: CandleFeatures    # the candle's own features (log return, return %, volume, log range, ...)
    center: np.ndarray          # the return center: median of the last return_zscore.window log returns
    zscore: np.ndarray          # (log return - center) / the return scale (robust IQR sigma, recent RMS, a floor
    #                             of min_sigma_pct and tick_floor ticks)
    runs_sigma: np.ndarray      # the runs' yardstick: RMS of runs.scale_window log returns before a guard band
    volume_ratio: np.ndarray    # volume / its rolling median of traded minutes (volume.window candles)
    log_volume_ratio: np.ndarray
    log_range_ratio: np.ndarray  # log range - log of its rolling median (range.window candles)
    window_mean: np.ndarray     # mean and standard deviation of the last volatility.window returns, in percent
    window_std: np.ndarray

    @classmethod
    def of(cls, **arrays) -> "Context":
        """A one-symbol context from some arrays (the rest NaN; ``features`` only as given): for examples and tests.

        >>> Context.of(zscore=np.array([1.0, 2.0])).positions.tolist()
        [0, 1]
        """
        length = len(next(iter(arrays.values())))
        missing = np.full(length, np.nan)
        defaults = {name: missing for name in cls.__dataclass_fields__}
        return cls(**{**defaults, "segments": Segments.one(length), "positions": np.arange(length),
                      "features": None, **arrays})


class Baselines:
    """The shared rolling baselines of ``Context``: ``context`` (score) before ``learn``, state at fixed names."""

    def __init__(self, params):
        zscore = params.return_zscore
        self.min_sigma = zscore.min_sigma_pct / 100
        self.tick_floor = zscore.tick_floor
        self.returns = RollingStats(zscore.window, params.refresh, median_iqr, params.guard)
        self.recent = RollingStats(zscore.recent_window, params.refresh, root_mean_square, params.guard)
        self.runs_scale = RollingStats(params.runs.scale_window, params.refresh, root_mean_square,
                                       params.runs.scale_guard)
        # the median of the minutes that traded: a thin market's zero-volume minutes are not its level
        self.volume = RollingStats(params.volume.window, params.refresh, traded_level, params.guard)
        self.range = RollingStats(params.range.window, params.refresh, median_only, params.guard)
        self.window = params.volatility.window
        self.window_tail = Tails.empty(1)  # each symbol's last window-1 returns in percent

    # state name prefix -> rolling statistic (the names are those of the detectors that once held them)
    def _stats(self) -> dict[str, RollingStats]:
        return {"zscore": self.returns, "zscore.recent": self.recent, "runs.scale": self.runs_scale,
                "volume": self.volume, "range": self.range}

    def context(self, features: CandleFeatures, positions: np.ndarray, segments: Segments) -> Context:
        center, sigma = self.returns.baselines(features.log_return, segments)
        recent_rms = self.recent.baselines(features.log_return, segments)[1]
        # a price moves at least one tick: in ticks, a thin market's one-tick move is not hundreds of sigmas
        floor = np.fmax(self.min_sigma, self.tick_floor * features.tick_return)
        zscore = (features.log_return - center) / np.maximum(np.maximum(sigma, recent_rms), floor)
        runs_sigma = np.maximum(self.runs_scale.baselines(features.log_return, segments)[1], floor)
        volume_ratio = (features.volume + 1e-12) / (self.volume.baselines(features.volume, segments)[0] + 1e-12)
        # (an idle market, median 0, is not an infinite spike)
        log_range_ratio = features.log_range - self.range.baselines(features.log_range, segments)[0]
        windows = trailing_windows(self.window_tail, features.return_pct, segments, self.window)
        return Context(segments=segments, positions=positions, features=features, center=center, zscore=zscore,
                       runs_sigma=runs_sigma, volume_ratio=volume_ratio, log_volume_ratio=np.log(volume_ratio),
                       log_range_ratio=log_range_ratio, window_mean=windows.mean(axis=1),
                       window_std=windows.std(axis=1, ddof=1))

    def learn(self, context: Context) -> None:
        features, segments = context.features, context.segments
        for stats, values in ((self.returns, features.log_return), (self.recent, features.log_return),
                              (self.runs_scale, features.log_return), (self.volume, features.volume),
                              (self.range, features.log_range)):
            stats.learn(values, segments)
        self.window_tail = self.window_tail.merged(features.return_pct, segments).last(self.window - 1)

    def state(self) -> dict[str, object]:
        return {**{f"{prefix}.{name}": values for prefix, stats in self._stats().items()
                   for name, values in stats.state().items()},
                "window.tail": self.window_tail}

    def restore(self, state) -> None:
        for prefix, stats in self._stats().items():
            stats.restore(state.within(prefix))
        self.window_tail = state.tails("window.tail")
