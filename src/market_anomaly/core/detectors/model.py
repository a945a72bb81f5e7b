"""The learned multivariate model as a detector (the model itself: ``core.learned``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from market_anomaly.core.detectors.base import Detector
from market_anomaly.core.features import Segments, Tails, trailing_windows
from market_anomaly.core.learned import MinorComponents, model_inputs


@dataclass(frozen=True)
class LearnedParams:
    file: str
    sequence: int         # candles in the "recent" inputs (run of moves, reversal, sustained volume)
    skip_components: int  # leading principal components (overall activity) the distance ignores
    typical_score: float  # median distance of the training candles: score 0
    alarm_score: float    # distance at the training alarm quantile: score 1
    threshold: float      # the model votes at or above this score
    warmup: int

    def __post_init__(self):
        if self.sequence < 2:
            raise ValueError("sequence needs at least 2 candles")
        if self.alarm_score <= self.typical_score:
            raise ValueError("alarm_score must be above typical_score")


class LearnedSurprise(Detector):
    """How inconsistent a candle and its last few minutes are with normal activity (``learned``).

    Inputs (``learned.model_inputs``) come from this candle's z-score, volume and range
    ratios and from the last ``sequence`` candles (RMS and drift of z, the reversal
    ``sqrt(-z_t * z_t-1)``, mean volume ratio); the memory is those candles' z-scores and
    log volume ratios. The score is the model's distance scaled so that a typical candle
    scores 0 and the alarm level calibrated by ``train`` scores 1; it votes at ``threshold``.
    NaN before training (no model).

    >>> from market_anomaly.core.baselines import Context
    >>> from market_anomaly.core.params import params_with
    >>> rng = np.random.default_rng(0)
    >>> detector = LearnedSurprise(params_with(learned={"sequence": 3, "threshold": 1.0, "warmup": 0}))
    >>> z, volume, range_ = rng.normal(size=3000), rng.lognormal(size=3000), rng.lognormal(size=3000)
    >>> detector.fit(detector.inputs(z, np.log(volume), np.log(range_)), alarm_quantile=0.999)
    >>> scores = detector.score(Context.of(zscore=np.array([0.1, 0.2, 12.0]), log_volume_ratio=np.zeros(3),
    ...                                    log_range_ratio=np.zeros(3)))
    >>> detector.votes(scores, np.arange(3)).tolist(), detector.reason(scores[2])[:6]
    ([False, False, True], 'MODEL ')
    """

    name, column, key, section, group = "MODEL", "model_score", "learned", "learned", 5
    Params = LearnedParams
    defaults = {"file": "model_params.model.npz", "sequence": 5, "skip_components": 1, "typical_score": 0.0,
                "alarm_score": 40.0, "threshold": 0.6, "warmup": 240}

    def __init__(self, params):
        super().__init__(params)
        self.params, self.model = params.learned, params.model
        self.typical, self.alarm = self.params.typical_score, self.params.alarm_score
        self.recent_z = self.recent_volume = Tails.empty(1)

    def inputs(self, zscore: np.ndarray, log_volume_ratio: np.ndarray, log_range_ratio: np.ndarray,
               segments: Segments | None = None) -> np.ndarray:
        """The model's input rows (``learned.model_inputs``); ``segments`` default: one symbol's series."""
        segments = segments or Segments.one(len(zscore))
        z = trailing_windows(self.recent_z, zscore, segments, self.params.sequence)
        volume = trailing_windows(self.recent_volume, log_volume_ratio, segments, self.params.sequence)
        reversal = np.sqrt(np.maximum(-z[:, -1] * z[:, -2], 0))
        return model_inputs(zscore, log_volume_ratio, log_range_ratio, np.sqrt(np.mean(z * z, axis=1)),
                            z.sum(axis=1) / np.sqrt(self.params.sequence), reversal, volume.mean(axis=1))

    def score(self, context) -> np.ndarray:
        if self.model is None:
            return np.full(len(context.zscore), np.nan)
        distance = self.model.distance(self.inputs(context.zscore, context.log_volume_ratio, context.log_range_ratio,
                                                   context.segments))
        return (distance - self.typical) / (self.alarm - self.typical)

    def learn(self, context) -> None:
        keep = self.params.sequence - 1
        self.recent_z = self.recent_z.merged(context.zscore, context.segments).last(keep)
        self.recent_volume = self.recent_volume.merged(context.log_volume_ratio, context.segments).last(keep)

    def fit(self, inputs: np.ndarray, alarm_quantile: float) -> None:
        """Training: fit the model, then typical level = median distance, alarm level = its ``alarm_quantile``."""
        self.model = MinorComponents.fit(inputs, self.params.skip_components)
        distance = self.model.distance(inputs)
        distance = distance[np.isfinite(distance)]
        self.typical, self.alarm = float(np.median(distance)), float(np.quantile(distance, alarm_quantile))

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.1f}x"

    def state(self) -> dict[str, object]:
        return {"z": self.recent_z, "volume": self.recent_volume}

    def restore(self, state) -> None:
        self.recent_z, self.recent_volume = state.tails("z"), state.tails("volume")
