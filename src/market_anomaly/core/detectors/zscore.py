"""The robust, adaptive z-score of the 1-minute log return."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from market_anomaly.core.detectors.base import Detector, check_windows


@dataclass(frozen=True)
class ReturnZScoreParams:
    window: int
    recent_window: int  # the scale is at least the RMS of this many recent returns (a busy market is not news)
    threshold: float
    min_sigma_pct: float  # floor on the return scale (quiet or tick-bound markets)
    warmup: int
    tick_floor: float = 0.0  # ... and at least this many ticks (``features.CandleFeatures.tick_return``)

    def __post_init__(self):
        check_windows(window=self.window, recent_window=self.recent_window)
        if not self.tick_floor >= 0:
            raise ValueError(f"tick_floor must be at least 0, got {self.tick_floor}")


class ReturnZScore(Detector):
    """Robust, adaptive z-score of the 1-minute log return: ``Context.zscore`` (``baselines``).

    Center: the median of the last ``window`` returns. Scale: the larger of their
    IQR-based sigma and the root mean square of the last ``recent_window`` returns, so a
    market that has just turned busy judges its next move against the busy level. Both
    are refreshed every ``refresh`` candles and ignore the outliers they are meant to find.
    The z-score is a shared baseline (the reversal and the learned model read it too); this
    detector reports it. Either direction is news.

    >>> from market_anomaly.core.baselines import Context
    >>> from market_anomaly.core.params import params_with
    >>> detector = ReturnZScore(params_with(return_zscore={"threshold": 6.0, "warmup": 4}))
    >>> scores = detector.score(Context.of(zscore=np.array([0.5, -1.0, 2.0, -0.4, -22.5])))
    >>> detector.votes(scores, np.arange(5)).tolist(), detector.reason(scores[-1])
    ([False, False, False, False, True], 'Z-SCORE 22.5σ')
    """

    name, column, key, section, group = "Z-SCORE", "zscore", "z_score", "return_zscore", 0
    Params = ReturnZScoreParams
    defaults = {"window": 240, "recent_window": 30, "threshold": 5.0, "min_sigma_pct": 0.002, "warmup": 240,
                "tick_floor": 1.0}
    two_sided = True

    def score(self, context) -> np.ndarray:
        return context.zscore
