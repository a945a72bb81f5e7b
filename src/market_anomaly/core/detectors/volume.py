"""Volume spikes against the symbol's own level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from market_anomaly.core.detectors.base import Detector, check_windows


@dataclass(frozen=True)
class VolumeParams:
    window: int
    threshold: float
    warmup: int
    # VOLUME SURGE (``runs.VolumeSurge``): the symbol's own busiest minutes, the ``surge_quantile`` of its last
    # ``surge_window`` unexplained log volumes, above their median, at least ``surge_floor``
    surge_window: int = 240
    surge_quantile: float = 0.99
    surge_floor: float = 0.5

    def __post_init__(self):
        check_windows(window=self.window, surge_window=self.surge_window)
        if not 0.5 <= self.surge_quantile < 1:
            raise ValueError(f"surge_quantile must be from 0.5 to below 1, got {self.surge_quantile}")
        if not self.surge_floor > 0:
            raise ValueError(f"surge_floor must be above 0, got {self.surge_floor}")


class VolumeSpike(Detector):
    """Volume as a multiple of the median volume of the last ``window`` candles: ``Context.volume_ratio``.

    >>> from market_anomaly.core.baselines import Context
    >>> from market_anomaly.core.params import params_with
    >>> detector = VolumeSpike(params_with(volume={"threshold": 8.0, "warmup": 3}))
    >>> ratios = detector.score(Context.of(volume_ratio=np.array([np.nan, 1.2, 0.9, 16.0])))
    >>> detector.votes(ratios, np.arange(4)).tolist(), detector.reason(ratios[-1])
    ([False, False, False, True], 'VOLUME 16x')
    """

    name, column, key, section, group = "VOLUME", "volume_ratio", "volume_spike", "volume", 2
    Params = VolumeParams
    defaults = {"window": 60, "threshold": 8.0, "warmup": 60, "surge_window": 240, "surge_quantile": 0.99,
                "surge_floor": 0.5}

    def score(self, context) -> np.ndarray:
        return context.volume_ratio

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.0f}x"
