"""Volume spikes against the symbol's own level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from market_anomaly.core.detectors.base import Detector


@dataclass(frozen=True)
class VolumeParams:
    window: int
    threshold: float
    warmup: int

    def __post_init__(self):
        if self.window < 2:
            raise ValueError("window needs at least 2 candles")


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
    defaults = {"window": 60, "threshold": 8.0, "warmup": 60}

    def score(self, context) -> np.ndarray:
        return context.volume_ratio

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.0f}x"
