"""The detectors: one small class each, ``score(values)`` then ``learn(values)`` on arrays of new candles.

``score`` looks at new values against what was learned before (and the earlier values of
the same array); ``learn`` appends them to the detector's short memory. ``votes`` turns
scores into votes, silent during the detector's warm-up (``positions`` count the
candles the symbol has seen) and wherever the score is not defined yet. ``reason``
says how big a deviation is. Each detector keeps its memory in ``state()``/``restore()``
as plain arrays.
"""

from __future__ import annotations

import numpy as np

from market_anomaly.core.features import (RollingStats, median_iqr, median_only, root_mean_square,
                                                trailing_windows)
from market_anomaly.core.learned import MinorComponents, model_inputs
from market_anomaly.core.params import (LearnedParams, ReturnZScoreParams, RunsParams, VolatilityParams,
                                              VolumeParams)


class Detector:
    """What the engine and consensus need from every detector: a name, votes and a reason."""

    name = ""
    threshold: float
    warmup: int
    own_vote = True  # past its own threshold it is named in an anomaly's reasons (runs detectors: surprise only)
    one_sided = False  # only rises vote (else either direction, by size)

    def votes(self, scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (positions >= self.warmup) & ((scores if self.one_sided else np.abs(scores)) >= self.threshold)

    def reason(self, score: float) -> str:
        return f"{self.name} {abs(score):.1f}σ"


class ReturnZScore(Detector):
    """Robust, adaptive z-score of the 1-minute log return.

    Center: the median of the last ``window`` returns. Scale: the larger of their
    IQR-based sigma and the root mean square of the last ``recent_window`` returns, so a
    market that has just turned busy judges its next move against the busy level. Both
    are refreshed every ``refresh`` candles and ignore the outliers they are meant to find.

    >>> from market_anomaly.core.params import ReturnZScoreParams
    >>> params = ReturnZScoreParams(window=4, recent_window=2, threshold=6.0, min_sigma_pct=0.0, warmup=4)
    >>> detector = ReturnZScore(params, refresh=1)
    >>> returns = np.array([0.001, -0.001, 0.002, -0.002, 0.05])
    >>> scores = detector.score(returns)
    >>> round(float(scores[-1]), 1), detector.votes(scores, np.arange(5)).tolist()
    (22.5, [False, False, False, False, True])
    >>> detector.learn(returns); detector.reason(scores[-1])
    'Z-SCORE 22.5σ'
    """

    name = "Z-SCORE"

    def __init__(self, params: ReturnZScoreParams, refresh: int, guard: int = 0):
        self.threshold, self.warmup = params.threshold, params.warmup
        self.min_sigma = params.min_sigma_pct / 100
        self.stats = RollingStats(params.window, refresh, median_iqr, guard)
        self.recent = RollingStats(params.recent_window, refresh, root_mean_square, guard)

    def score(self, log_returns: np.ndarray) -> np.ndarray:
        return self.score_and_center(log_returns)[0]

    def score_and_center(self, log_returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z-score, center): the runs detectors measure their windows from the same center."""
        center, sigma = self.stats.baselines(log_returns)
        recent_rms = self.recent.baselines(log_returns)[1]
        return (log_returns - center) / np.maximum(np.maximum(sigma, recent_rms), self.min_sigma), center

    def learn(self, log_returns: np.ndarray) -> None:
        self.stats.learn(log_returns)
        self.recent.learn(log_returns)

    def state(self) -> dict[str, np.ndarray]:
        return {**self.stats.state("zscore"), **self.recent.state("zscore.recent")}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.stats.restore(state, "zscore")
        self.recent.restore(state, "zscore.recent")


class RecentScale:
    """The scale the runs detectors measure in: RMS of the ``scale_window`` log returns before a guard band.

    The guard (``scale_guard`` candles, at least the longest run window) keeps a run of
    several minutes out of its own yardstick; floored at ``min_sigma``.
    """

    def __init__(self, params: RunsParams, refresh: int, min_sigma_pct: float):
        self.stats = RollingStats(params.scale_window, refresh, root_mean_square, params.scale_guard)
        self.min_sigma = min_sigma_pct / 100

    def scale(self, log_returns: np.ndarray) -> np.ndarray:
        return np.maximum(self.stats.baselines(log_returns)[1], self.min_sigma)

    def learn(self, log_returns: np.ndarray) -> None:
        self.stats.learn(log_returns)

    def state(self) -> dict[str, np.ndarray]:
        return self.stats.state("runs.scale")

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.stats.restore(state, "runs.scale")


class Volatility(Detector):
    """The 1-hour window's return standard deviation against the history of that same quantity.

    Every ``refresh`` candles the logarithm of the window's standard deviation is sampled;
    a candle's score is the robust z-score of the current value against ``history``
    samples taken before its refresh point (median and IQR, themselves refreshed every
    ``refresh`` samples: the history is long, a little lag costs nothing). Only rises vote.

    >>> from market_anomaly.core.params import VolatilityParams
    >>> detector = Volatility(VolatilityParams(window=3, history=4, threshold=3.0, warmup=0), refresh=2,
    ...                       floor_pct=1e-6)
    >>> calm = np.tile([0.01, -0.01, 0.012, -0.011], 5)
    >>> z, mean, std = detector.score(np.concatenate([calm, [0.2, -0.2]]))
    >>> bool(z[-1] > 3), round(float(std[-1]), 3)
    (True, 0.2)
    """

    name = "VOLATILITY"
    one_sided = True

    def __init__(self, params: VolatilityParams, refresh: int, floor_pct: float):
        self.threshold, self.warmup = params.threshold, params.warmup
        self.window, self.refresh, self.floor = params.window, refresh, floor_pct
        self.recent = np.empty(0)  # the last window-1 returns
        self.seen = 0
        self.samples = RollingStats(params.history, refresh, median_iqr)

    def score(self, returns_pct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z-score, window mean, window standard deviation) per new candle; returns in percent."""
        windows = trailing_windows(self.recent, returns_pct, self.window)
        mean, std = windows.mean(axis=1), windows.std(axis=1, ddof=1)
        log_std = np.log(np.maximum(std, self.floor))
        positions = self.seen + np.arange(len(returns_pct))
        samples_before = positions // self.refresh
        center, sigma = self.samples.baselines_at(log_std[(positions + 1) % self.refresh == 0],
                                                  samples_before - samples_before % self.refresh)
        return (log_std - center) / np.maximum(sigma, 1e-9), mean, std

    def learn(self, returns_pct: np.ndarray) -> None:
        windows = trailing_windows(self.recent, returns_pct, self.window)
        positions = self.seen + np.arange(len(returns_pct))
        sampled = (positions + 1) % self.refresh == 0
        self.samples.learn(np.log(np.maximum(windows[sampled].std(axis=1, ddof=1), self.floor)))
        self.recent = np.concatenate([self.recent, returns_pct])[-(self.window - 1):]
        self.seen += len(returns_pct)

    def state(self) -> dict[str, np.ndarray]:
        return {"volatility.recent": self.recent, "volatility.seen": np.array([self.seen]),
                **self.samples.state("volatility.samples")}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        if "volatility.recent" in state:
            self.recent, self.seen = state["volatility.recent"], int(state["volatility.seen"][0])
            self.samples.restore(state, "volatility.samples")


class VolumeSpike(Detector):
    """Volume as a multiple of the median volume of the last ``window`` candles.

    >>> from market_anomaly.core.params import VolumeParams
    >>> detector = VolumeSpike(VolumeParams(window=3, threshold=8.0, warmup=3), refresh=1)
    >>> ratios = detector.score(np.array([2.0, 3.0, 2.5, 40.0]))
    >>> ratios.round(1).tolist(), detector.votes(ratios, np.arange(4)).tolist(), detector.reason(ratios[-1])
    ([nan, nan, nan, 16.0], [False, False, False, True], 'VOLUME 16x')
    """

    name = "VOLUME"

    def __init__(self, params: VolumeParams, refresh: int, guard: int = 0):
        self.threshold, self.warmup = params.threshold, params.warmup
        self.stats = RollingStats(params.window, refresh, median_only, guard)

    def score(self, volumes: np.ndarray) -> np.ndarray:
        median, _ = self.stats.baselines(volumes)
        return (volumes + 1e-12) / (median + 1e-12)  # an idle market (median 0) is not an infinite spike

    def learn(self, volumes: np.ndarray) -> None:
        self.stats.learn(volumes)

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.0f}x"

    def state(self) -> dict[str, np.ndarray]:
        return self.stats.state("volume")

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.stats.restore(state, "volume")


class LearnedSurprise(Detector):
    """How inconsistent a candle and its last few minutes are with normal activity (``learned``).

    Inputs (``learned.model_inputs``) come from this candle's z-score, volume and range
    ratios and from the last ``sequence`` candles (RMS and drift of z, the reversal
    ``sqrt(-z_t * z_t-1)``, mean volume ratio); the memory is those candles' z-scores and
    log volume ratios. The score is the model's distance scaled so that a typical candle
    scores 0 and the alarm level calibrated by ``train`` scores 1; it votes at ``threshold``.

    >>> from market_anomaly.core.params import LearnedParams
    >>> rng = np.random.default_rng(0)
    >>> params = LearnedParams("m.npz", sequence=3, skip_components=1, typical_score=0.0, alarm_score=1.0,
    ...                        threshold=1.0, warmup=0)
    >>> detector = LearnedSurprise(params)
    >>> z, volume, range_ = rng.normal(size=3000), rng.lognormal(size=3000), rng.lognormal(size=3000)
    >>> inputs = detector.inputs(z, np.log(volume), np.log(range_))
    >>> detector.fit(inputs, alarm_quantile=0.999)
    >>> scores = detector.score(np.array([0.1, 0.2, 12.0]), np.zeros(3), np.zeros(3))
    >>> detector.votes(scores, np.arange(3)).tolist(), detector.reason(scores[2])[:6]
    ([False, False, True], 'MODEL ')
    """

    name = "MODEL"
    one_sided = True

    def __init__(self, params: LearnedParams, model: MinorComponents | None = None):
        self.params, self.model = params, model
        self.threshold, self.warmup = params.threshold, params.warmup
        self.typical, self.alarm = params.typical_score, params.alarm_score
        self.recent_z = self.recent_volume = np.empty(0)

    def inputs(self, zscore: np.ndarray, log_volume_ratio: np.ndarray, log_range_ratio: np.ndarray) -> np.ndarray:
        z = trailing_windows(self.recent_z, zscore, self.params.sequence)
        volume = trailing_windows(self.recent_volume, log_volume_ratio, self.params.sequence)
        reversal = np.sqrt(np.maximum(-z[:, -1] * z[:, -2], 0))
        return model_inputs(zscore, log_volume_ratio, log_range_ratio, np.sqrt(np.mean(z * z, axis=1)),
                            z.sum(axis=1) / np.sqrt(self.params.sequence), reversal, volume.mean(axis=1))

    def score(self, zscore: np.ndarray, log_volume_ratio: np.ndarray, log_range_ratio: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.full(len(zscore), np.nan)
        distance = self.model.distance(self.inputs(zscore, log_volume_ratio, log_range_ratio))
        return (distance - self.typical) / (self.alarm - self.typical)

    def learn(self, zscore: np.ndarray, log_volume_ratio: np.ndarray) -> None:
        keep = self.params.sequence - 1
        self.recent_z = np.concatenate([self.recent_z, zscore])[-keep:]
        self.recent_volume = np.concatenate([self.recent_volume, log_volume_ratio])[-keep:]

    def fit(self, inputs: np.ndarray, alarm_quantile: float) -> None:
        """Training: fit the model, then typical level = median distance, alarm level = its ``alarm_quantile``."""
        self.model = MinorComponents.fit(inputs, self.params.skip_components)
        distance = self.model.distance(inputs)
        distance = distance[np.isfinite(distance)]
        self.typical, self.alarm = float(np.median(distance)), float(np.quantile(distance, alarm_quantile))

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.1f}x"

    def state(self) -> dict[str, np.ndarray]:
        return {"learned.z": self.recent_z, "learned.volume": self.recent_volume}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        if "learned.z" in state:
            self.recent_z, self.recent_volume = state["learned.z"], state["learned.volume"]


class _Run(Detector):
    """A statistic of the last ``window`` values (this candle's included); memory: the ``window - 1`` before."""

    key = ""
    threshold = 0.0
    own_vote = False

    def __init__(self, window: int, warmup: int):
        self.window, self.warmup = window, warmup
        self.recent = np.empty(0)

    def windows(self, values: np.ndarray) -> np.ndarray:
        return trailing_windows(self.recent, values, self.window)

    def learn(self, values: np.ndarray) -> None:
        if self.window > 1:
            self.recent = np.concatenate([self.recent, values])[-(self.window - 1):]

    def state(self) -> dict[str, np.ndarray]:
        return {f"runs.{self.key}": self.recent}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.recent = state.get(f"runs.{self.key}", self.recent)


class VolumeRun(_Run):
    """Sustained volume the price action does not explain: a minute of heavy volume is ordinary, minutes are not.

    Per candle, the unexplained log volume is ``log(volume ratio) - elasticity * max(log(range ratio), 0)``
    (volume rises with the candle's range on real markets), floored at ``log(0.1)`` so one
    idle minute does not cancel a run; the score is ``exp`` of its mean over the last
    ``volume_window`` candles: the geometric-mean multiple of normal volume, sustained. With
    ``volume_combine`` ``"min"`` the score is the smallest of those candles' multiples instead:
    *every* minute of the run must be heavy, so one huge real print followed by ordinary
    minutes (common on real markets) no longer looks like a sustained burst.

    >>> from market_anomaly.core.params import RunsParams
    >>> run = VolumeRun(RunsParams(volume_window=3, volume_elasticity=1.0, return_window=5, trend_window=4,
    ...                    scale_window=60, scale_guard=5, warmup=0))
    >>> run.score(np.log(np.array([1.0, 12.0, 12.0, 12.0])), np.zeros(4)).round(1).tolist()
    [nan, nan, 5.2, 12.0]
    >>> run.reason(12.0)
    'VOLUME RUN 12x'
    """

    name, key = "VOLUME RUN", "volume"

    def __init__(self, params: RunsParams):
        super().__init__(params.volume_window, params.warmup)
        self.elasticity = params.volume_elasticity
        self.sustained = params.volume_combine == "min"

    def excess(self, log_volume_ratio: np.ndarray, log_range_ratio: np.ndarray) -> np.ndarray:
        return np.maximum(log_volume_ratio - self.elasticity * np.maximum(log_range_ratio, 0), -2.3)

    def score(self, log_volume_ratio: np.ndarray, log_range_ratio: np.ndarray) -> np.ndarray:
        windows = self.windows(self.excess(log_volume_ratio, log_range_ratio))
        return np.exp(windows.min(axis=1) if self.sustained else windows.mean(axis=1))

    def learn(self, log_volume_ratio: np.ndarray, log_range_ratio: np.ndarray) -> None:
        super().learn(self.excess(log_volume_ratio, log_range_ratio))

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.0f}x"


class Burst(_Run):
    """Short realized volatility: RMS of the last ``return_window`` log returns over the long-run robust sigma.

    With ``burst_trim`` = k the k largest squared moves of the window are left out: real
    volatility clusters typically start with one jump (which the z-score reports), while a
    burst of volatility is many large minutes; trimming one keeps the jump from posing as a burst.

    >>> from market_anomaly.core.params import RunsParams
    >>> burst = Burst(RunsParams(volume_window=3, volume_elasticity=1.0, return_window=2, trend_window=4,
    ...                    scale_window=60, scale_guard=5, warmup=0))
    >>> burst.score(np.array([0.001, 0.003, -0.004]), np.zeros(3), np.full(3, 0.001)).round(2).tolist()
    [nan, 2.24, 3.54]
    """

    name, key = "BURST", "returns"

    def __init__(self, params: RunsParams):
        super().__init__(params.return_window, params.warmup)
        self.trim = min(params.burst_trim, self.window - 1)

    def score(self, log_returns: np.ndarray, center: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        deviations = self.windows(log_returns) - center[:, None]
        squares = deviations * deviations
        if not self.trim:
            return np.sqrt(np.mean(squares, axis=1)) / sigma
        # Trimmed: without the largest squares, so one jump (the z-score's news) is not a burst of volatility.
        if self.trim == 1:
            kept = squares.sum(axis=1) - squares.max(axis=1)
        else:
            kept = np.sort(squares, axis=1)[:, :self.window - self.trim].sum(axis=1)
        return np.sqrt(kept / (self.window - self.trim)) / sigma

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.1f}x"


class Drift(Burst):
    """Directional run: the sum of the last ``return_window`` log returns in long-run sigmas of that sum.

    A pump or a crash spread over several minutes is a large drift even when no single
    minute is extreme. Shares its memory layout with ``Burst`` (its own copy).
    """

    name, key = "DRIFT", "drift"
    reason = Detector.reason  # in sigmas, either direction (Burst's is a multiple)

    def score(self, log_returns: np.ndarray, center: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        deviations = self.windows(log_returns) - center[:, None]
        return deviations.sum(axis=1) / (sigma * np.sqrt(self.window))


class Reversal(_Run):
    """A move undone the next minute: ``min(|z_t-1|, |z_t|) - netting * |z_t-1 + z_t|`` for opposite signs, else 0.

    A price spike (a print far off the market that the next minute takes back, to where it
    was) is rare as a *pair*, even where single large returns are not; a partial pull-back
    after a real jump scores less than the pull-back (the level did not return). The net
    move of the pair is taken off at ``reversal_netting`` (0..1): the next minute's own
    natural move sits in that net move too, so taking all of it off (1) misses spikes whose
    next minute happened to move on; half of it (measured on the real candles) keeps a
    partial pull-back well below a spike that returns.

    >>> from market_anomaly.core.params import RunsParams
    >>> reversal = Reversal(RunsParams(volume_window=3, volume_elasticity=1.0, return_window=5, trend_window=4,
    ...                    scale_window=60, scale_guard=5, warmup=0, reversal_netting=0.5))
    >>> reversal.score(np.array([1.0, 9.0, -8.0, -3.0])).tolist(), reversal.reason(7.5)
    ([nan, 0.0, 7.5, 0.0], 'REVERSAL 7.5σ')
    """

    name, key = "REVERSAL", "zscore"

    def __init__(self, params: RunsParams):
        super().__init__(2, params.warmup)
        self.netting = params.reversal_netting

    def score(self, zscore: np.ndarray) -> np.ndarray:
        pair = self.windows(zscore)
        with np.errstate(invalid="ignore"):
            size = np.minimum(np.abs(pair[:, 0]), np.abs(pair[:, 1])) - self.netting * np.abs(pair[:, 0] + pair[:, 1])
            return np.where(pair[:, 0] * pair[:, 1] < 0, np.maximum(size, 0.0), np.where(np.isnan(size), np.nan, 0.0))


class Trend(_Run):
    """A steady run: the smallest same-direction move of the last ``trend_window`` candles, in long-run sigmas.

    Every candle of the window must move the same way by at least the score (0 when the
    directions differ): a pump or a slide that builds minute after minute, which real
    markets rarely sustain even when single minutes or 5-minute sums are large.

    >>> from market_anomaly.core.params import RunsParams
    >>> trend = Trend(RunsParams(volume_window=3, volume_elasticity=1.0, return_window=5, trend_window=3,
    ...                    scale_window=60, scale_guard=5, warmup=0))
    >>> trend.score(np.array([0.002, 0.003, 0.004, -0.001]), np.zeros(4), np.full(4, 0.001)).round(1).tolist()
    [nan, nan, 2.0, 0.0]
    """

    name, key = "TREND", "trend"

    def __init__(self, params: RunsParams):
        super().__init__(params.trend_window, params.warmup)

    def score(self, log_returns: np.ndarray, center: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        moves = (self.windows(log_returns) - center[:, None]) / sigma[:, None]
        with np.errstate(invalid="ignore"):
            return np.maximum(np.maximum(moves.min(axis=1), (-moves).min(axis=1)), 0.0)

