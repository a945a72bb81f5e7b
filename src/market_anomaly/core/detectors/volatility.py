"""The 1-hour return volatility against its own history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from market_anomaly.core.detectors.base import Detector, check_windows
from market_anomaly.core.features import RollingStats, Segments, median_iqr


@dataclass(frozen=True)
class VolatilityParams:
    window: int   # candles of the return window (``Context.window_std``)
    history: int  # samples of its logarithm the score compares with (one per ``refresh`` candles)
    threshold: float
    warmup: int

    def __post_init__(self):
        check_windows(window=self.window, history=self.history)


MIN_LOG_SIGMA = 0.05  # a history whose log std hardly varies (floored, silent) does not make a 5 % rise news


class Volatility(Detector):
    """The 1-hour window's return standard deviation (``Context.window_std``) against the history of that quantity.

    Every ``refresh`` candles the logarithm of the window's standard deviation is sampled;
    a candle's score is the robust z-score of the current value against ``history``
    samples taken before its refresh point (median and IQR, themselves refreshed every
    ``refresh`` samples: the history is long, a little lag costs nothing). Only rises vote.

    >>> from market_anomaly.core.baselines import Context
    >>> from market_anomaly.core.params import params_with
    >>> detector = Volatility(params_with(refresh=2, volatility={"history": 4, "threshold": 3.0, "warmup": 0}))
    >>> calm = Context.of(window_std=np.tile([0.010, 0.012, 0.011, 0.009], 5))
    >>> detector.learn(calm)
    >>> busy = Context.of(window_std=np.array([0.2]), positions=np.array([20]))
    >>> z = detector.score(busy)
    >>> bool(z[0] > 3), detector.votes(z, busy.positions).tolist(), detector.reason(z[0])[:10]
    (True, [True], 'VOLATILITY')
    """

    name, column, key, section = "VOLATILITY", "volatility_z", "volatility", "volatility"
    Params = VolatilityParams
    defaults = {"window": 60, "history": 144, "threshold": 3.0, "warmup": 780}

    def __init__(self, params):
        super().__init__(params)
        self.refresh = params.refresh
        self.floor = params.return_zscore.min_sigma_pct  # the window's std is in percent, so is its floor
        self.window = params.volatility.window
        self.samples = RollingStats(params.volatility.history, params.refresh, median_iqr)

    def _sampled(self, context) -> tuple[np.ndarray, np.ndarray, Segments]:
        """(log std of every new candle, which candles are sampled, the samples per symbol).

        The std is floored at one tick move in the window too: a thin market's silent hours are not its level.
        """
        floor = self.floor if context.features is None else np.fmax(
            self.floor, context.features.tick_return * 100 / np.sqrt(self.window))
        log_std = np.log(np.maximum(context.window_std, floor))
        sampled = (context.positions + 1) % self.refresh == 0
        return log_std, sampled, Segments(np.bincount(context.segments.ids[sampled],
                                                      minlength=len(context.segments)))

    def score(self, context) -> np.ndarray:
        log_std, sampled, samples = self._sampled(context)
        samples_before = context.positions // self.refresh
        center, sigma = self.samples.baselines_at(log_std[sampled], samples, samples_before - samples_before % self.refresh,
                                                  context.segments.ids)
        return (log_std - center) / np.maximum(sigma, MIN_LOG_SIGMA)

    def learn(self, context) -> None:
        log_std, sampled, samples = self._sampled(context)
        self.samples.learn(log_std[sampled], samples)

    def state(self) -> dict[str, object]:
        return {f"samples.{name}": values for name, values in self.samples.state().items()}

    def restore(self, state) -> None:
        self.samples.restore(state.within("samples"))
