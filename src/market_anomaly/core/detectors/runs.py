"""Multi-minute run detectors: sustained volume (its surge against the symbol's own busiest minutes, and volume that
did not move the price), sustained trade counts, bursts, drifts, steady trends, reversals (section ``runs``; the
surge reads the ``volume`` section)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from market_anomaly.core.detectors.base import Detector, check_windows
from market_anomaly.core.detectors.volume import VolumeParams, VolumeSpike
from market_anomaly.core.features import RollingStats, Tails, median_upper_spread, traded_level, trailing_windows


RUN_FLOOR = -2.3  # log(0.1): a run's per-minute log multiples stop here (a minute without volume or trades: -inf)
TRADES_WINDOW = 240  # 4 hours: a pump's crowd gathers in the hour before it, which a 1-hour level would absorb


@dataclass(frozen=True)
class RunsParams:
    volume_window: int        # candles whose unexplained volume is averaged (VOLUME RUN)
    volume_elasticity: float  # log volume a range excess explains: excess = log volume ratio - this * log range ratio
    return_window: int        # candles of the short realized volatility (BURST) and the drift (DRIFT)
    trend_window: int         # candles that must all move the same way (TREND)
    scale_window: int         # the runs' yardstick (``Context.runs_sigma``): RMS of this many log returns ...
    scale_guard: int          # ... ending this many candles before the refresh point
    warmup: int
    burst_trim: int = 0          # BURST: the largest squared moves of its window it leaves out (0: plain RMS)
    volume_combine: str = "mean"  # VOLUME RUN: "mean" (geometric mean of the run) or "min" (every candle heavy)
    reversal_netting: float = 1.0  # REVERSAL: share of the pair's net move |z_t-1 + z_t| taken off (see Reversal)
    trades_window: int = TRADES_WINDOW  # TRADES RUN: candles whose traded minutes give the usual trade count

    def __post_init__(self):
        if self.volume_combine not in ("mean", "min"):
            raise ValueError(f"volume_combine must be \"mean\" or \"min\", got {self.volume_combine!r}")
        if not 0 <= self.reversal_netting <= 1:
            raise ValueError(f"reversal_netting must be between 0 and 1, got {self.reversal_netting}")
        check_windows(1, volume_window=self.volume_window, trend_window=self.trend_window,
                      scale_window=self.scale_window, trades_window=self.trades_window)
        check_windows(0, scale_guard=self.scale_guard)
        check_windows(return_window=self.return_window)


RUNS_DEFAULTS = {"volume_window": 3, "volume_elasticity": 1.0, "return_window": 5, "trend_window": 4,
                 "scale_window": 60, "scale_guard": 5, "warmup": 240, "burst_trim": 1, "volume_combine": "min",
                 "reversal_netting": 0.5, "trades_window": TRADES_WINDOW}


class _Run(Detector):
    """A statistic of the last ``window`` values (this candle's included); memory: the ``window - 1`` before."""

    section, Params, defaults = "runs", RunsParams, RUNS_DEFAULTS
    threshold = 0.0
    own_vote = False

    def __init__(self, params, window: int):
        self.warmup, self.window = params.runs.warmup, window
        self.recent = Tails.empty(1)
        self.rolling: dict[str, RollingStats] = {}  # a run's own baselines, by state prefix (kept in its state)
        self._values_of, self._values = None, None

    def values(self, context) -> np.ndarray:
        """The per-candle values the run is a statistic of (``run_values``), computed once per call's context:
        scoring and learning both read them, and a run's own baselines must be read before they learn."""
        if self._values_of is not context:
            self._values_of, self._values = context, self.run_values(context)
        return self._values

    def run_values(self, context) -> np.ndarray:
        raise NotImplementedError

    def windows(self, context) -> np.ndarray:
        return trailing_windows(self.recent, self.values(context), context.segments, self.window)

    def learn(self, context) -> None:
        self.recent = self.recent.merged(self.values(context), context.segments).last(self.window - 1)

    def state(self) -> dict[str, object]:
        return {"recent": self.recent, **{f"{prefix}.{name}": values for prefix, stats in self.rolling.items()
                                          for name, values in stats.state().items()}}

    def restore(self, state) -> None:
        self.recent = state.tails("recent")
        for prefix, stats in self.rolling.items():
            stats.restore(state.within(prefix))


class VolumeRun(_Run):
    """Sustained volume the price action does not explain: a minute of heavy volume is ordinary, minutes are not.

    Per candle, the unexplained log volume is ``log(volume ratio) - elasticity * max(log(range ratio), 0)``
    (volume rises with the candle's range on real markets), floored at ``log(0.1)`` so one
    idle minute does not cancel a run; the score is ``exp`` of its mean over the last
    ``volume_window`` candles: the geometric-mean multiple of normal volume, sustained. With
    ``volume_combine`` ``"min"`` the score is the smallest of those candles' multiples instead:
    *every* minute of the run must be heavy, so one huge real print followed by ordinary
    minutes (common on real markets) no longer looks like a sustained burst.

    >>> from market_anomaly.core.baselines import Context
    >>> from market_anomaly.core.params import params_with
    >>> run = VolumeRun(params_with(runs={"volume_window": 3, "volume_combine": "mean", "warmup": 0}))
    >>> context = Context.of(log_volume_ratio=np.log([1.0, 12.0, 12.0, 12.0]), log_range_ratio=np.zeros(4))
    >>> run.score(context).round(1).tolist(), run.reason(12.0)
    ([nan, nan, 5.2, 12.0], 'VOLUME RUN 12x')
    """

    name, column, key, group = "VOLUME RUN", "volume_run", "volume_run", 2

    def __init__(self, params):
        super().__init__(params, params.runs.volume_window)
        self.elasticity = params.runs.volume_elasticity
        self.sustained = params.runs.volume_combine == "min"

    def run_values(self, context) -> np.ndarray:
        return np.maximum(context.log_volume_ratio - self.elasticity * np.maximum(context.log_range_ratio, 0),
                          RUN_FLOOR)

    def sustained_log(self, context) -> np.ndarray:
        """The log of the run's volume multiple (its smallest or mean unexplained log volume)."""
        windows = self.windows(context)
        return windows.min(axis=1) if self.sustained else windows.mean(axis=1)

    def score(self, context) -> np.ndarray:
        return np.exp(self.sustained_log(context))

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.0f}x"


class VolumeSurge(VolumeRun):
    """The volume run against the symbol's own busiest minutes: how many times further above its traded level the
    run's log volume lies than the symbol's busy minutes usually do.

    The score is ``log(run multiple) / spread``, where ``spread`` is how far the ``volume.surge_quantile``
    (0.99: its busiest 1 % of minutes) of the symbol's last ``volume.surge_window`` unexplained log volumes
    lies above their median (refreshed and guarded like every baseline; at least ``volume.surge_floor``).
    The pooled VOLUME RUN table is the thin pairs' (single trades after silence make 200-1,200x minutes
    ordinary there), so an 8-30x run on a liquid pair, whose busiest minutes are 4-6x, looks ordinary in
    it; measured against each symbol's own spread the two kinds of market share one scale. A score of 2:
    the run's log multiple is twice that spread.

    >>> from market_anomaly.core.baselines import Context
    >>> from market_anomaly.core.params import params_with
    >>> surge = VolumeSurge(params_with(refresh=1, guard=2, volume={"surge_window": 4, "surge_quantile": 0.75},
    ...                                 runs={"volume_window": 2, "warmup": 0}))
    >>> usual = np.log([1.0, 4.0, 1.0, 4.0, 1.0, 4.0, 16.0, 16.0])  # busy minutes at 4x; then 16x twice
    >>> surge.score(Context.of(log_volume_ratio=usual, log_range_ratio=np.zeros(8))).round(1).tolist()
    [nan, nan, nan, nan, nan, nan, 2.0, 4.0]
    >>> surge.reason(4.0)
    'VOLUME SURGE 4.0'
    """

    name, column, key, section, group = "VOLUME SURGE", "volume_surge", "volume_surge", "volume", 2
    Params, defaults = VolumeParams, VolumeSpike.defaults  # the volume section, declared by VOLUME

    def __init__(self, params):
        super().__init__(params)
        volume = params.volume
        self.floor = volume.surge_floor
        self.spread = RollingStats(volume.surge_window, params.refresh,
                                   partial(median_upper_spread, quantile=volume.surge_quantile), params.guard)
        self.rolling = {"spread": self.spread}

    def score(self, context) -> np.ndarray:
        spread = self.spread.baselines(self.values(context), context.segments)[1]
        return self.sustained_log(context) / np.maximum(spread, self.floor)

    def learn(self, context) -> None:
        super().learn(context)
        self.spread.learn(self.values(context), context.segments)

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.1f}"


class AbsorbedVolume(VolumeRun):
    """Heavy volume at a price that did not move: the volume run over minutes that traded above the symbol's traded
    level with the close within half a tick of the previous one (any other minute counts as the run's floor, 0.1x,
    so the score is 0.1x or at least 1x: a quiet minute at a still price is no absorption).

    On a thin market the book is shallow, so real buying or selling moves the price: of the 3-minute runs at 8x
    the traded level or more on the 18 thin BTC pairs of the development data (1-6 a day), 0-0.5 a day kept the
    close where it was (3 a day on one pair), and none on the 14 liquid series. Minutes of heavy trading that
    move nothing are what wash trading and a large order absorbed by a resting one look like. Liquid markets,
    whose close moves nearly every minute, seldom score here at all; their volume runs are VOLUME SURGE's.

    >>> from market_anomaly.core.baselines import CandleFeatures, Context
    >>> from market_anomaly.core.params import params_with
    >>> absorbed = AbsorbedVolume(params_with(runs={"volume_window": 2, "warmup": 0}))
    >>> context = Context.of(log_volume_ratio=np.log([20.0, 20.0, 20.0, 20.0]), log_range_ratio=np.zeros(4),
    ...                      features=CandleFeatures.of(log_return=np.array([0.0, 0.0, 0.01, 0.0]),
    ...                                             tick_return=np.full(4, 0.001)))
    >>> absorbed.score(context).round(1).tolist(), absorbed.reason(20.0)  # the third minute moved 10 ticks
    ([nan, 20.0, 0.1, 0.1], 'ABSORBED VOLUME 20x')
    """

    name, column, key, group = "ABSORBED VOLUME", "absorbed_volume", "absorbed_volume", 2

    def run_values(self, context) -> np.ndarray:
        features = context.features
        with np.errstate(invalid="ignore"):  # NaN: a symbol's first candle, or no price step seen yet
            still = np.abs(features.log_return) < 0.5 * np.where(np.isnan(features.tick_return), 1e-12,
                                                                  features.tick_return)
            return np.where(still & (context.log_volume_ratio > 0), context.log_volume_ratio, RUN_FLOOR)


class TradesRun(_Run):
    """A crowd, sustained: the smallest, over the last ``volume_window`` candles, of the trade count as a multiple of
    the symbol's usual count in a minute that traded (the median over its last ``trades_window`` minutes that did,
    refreshed and guarded like every baseline); a minute without trades is 0.1x. NaN where candles carry no count.

    Volume cannot tell one large order from many takers; the number of trades can. At the 17 real pumps that show on
    the candles of the development data's thin BTC pairs this scores 32-503x, while away from the pumps its 99.9th
    percentile is 9x there (9x on the 8 liquid futures months; the largest 76x and 48x), and a single trade after
    silence, a frequent false alarm on the thin pairs, is 1x however large it is. The usual count is 4 hours' (a pump's
    crowd gathers in the hour before it: with a 1-hour level two pumps scored 15x and 21x). Its own consensus group:
    a crowd is news of its own, and paired with a drift it is what a pump looks like.

    >>> from market_anomaly.core.baselines import CandleFeatures, Context
    >>> from market_anomaly.core.params import params_with
    >>> run = TradesRun(params_with(refresh=1, guard=0, runs={"trades_window": 4, "volume_window": 2, "warmup": 0}))
    >>> trades = np.array([2.0, 0.0, 2.0, 2.0, 0.0, 2.0, 80.0, 120.0])  # two trades a traded minute, then a crowd
    >>> run.score(Context.of(center=np.zeros(8), features=CandleFeatures.of(trades=trades))).round(1).tolist()
    [nan, nan, nan, nan, nan, 0.1, 1.0, 40.0]
    >>> run.reason(40.0)
    'TRADES RUN 40x'
    """

    name, column, key, group = "TRADES RUN", "trades_run", "trades_run", 6

    def __init__(self, params):
        super().__init__(params, params.runs.volume_window)
        self.level = RollingStats(params.runs.trades_window, params.refresh, traded_level, params.guard)
        self.rolling = {"level": self.level}
        self.warmup = max(self.warmup, params.runs.trades_window + params.guard)  # a level of its own to wait for

    def run_values(self, context) -> np.ndarray:
        trades = context.features.trades
        level = self.level.baselines(trades, context.segments)[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.maximum(np.log(trades / level), RUN_FLOOR)  # NaN stays NaN: no count, or no level yet

    def score(self, context) -> np.ndarray:
        return np.exp(self.windows(context).min(axis=1))

    def learn(self, context) -> None:
        super().learn(context)
        self.level.learn(context.features.trades, context.segments)

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.0f}x"


class Burst(_Run):
    """Short realized volatility: RMS of the last ``return_window`` log returns (from ``Context.center``) over
    ``Context.runs_sigma``.

    With ``burst_trim`` = k the k largest squared moves of the window are left out: real
    volatility clusters typically start with one jump (which the z-score reports), while a
    burst of volatility is many large minutes; trimming one keeps the jump from posing as a burst.

    >>> from market_anomaly.core.baselines import CandleFeatures, Context
    >>> from market_anomaly.core.params import params_with
    >>> burst = Burst(params_with(runs={"return_window": 2, "burst_trim": 0, "warmup": 0}))
    >>> context = Context.of(center=np.zeros(3), runs_sigma=np.full(3, 0.001),
    ...                      features=CandleFeatures.of(log_return=np.array([0.001, 0.003, -0.004])))
    >>> burst.score(context).round(2).tolist(), burst.reason(3.54)
    ([nan, 2.24, 3.54], 'BURST 3.5x')
    """

    name, column, key, group = "BURST", "burst", "burst", 1

    def __init__(self, params):
        super().__init__(params, params.runs.return_window)
        self.trim = min(params.runs.burst_trim, self.window - 1)

    def run_values(self, context) -> np.ndarray:
        return context.features.log_return

    def score(self, context) -> np.ndarray:
        deviations = self.windows(context) - context.center[:, None]
        squares = deviations * deviations
        if not self.trim:
            return np.sqrt(np.mean(squares, axis=1)) / context.runs_sigma
        # Trimmed: without the largest squares, so one jump (the z-score's news) is not a burst of volatility.
        if self.trim == 1:
            kept = squares.sum(axis=1) - squares.max(axis=1)
        else:
            kept = np.sort(squares, axis=1)[:, :self.window - self.trim].sum(axis=1)
        return np.sqrt(kept / (self.window - self.trim)) / context.runs_sigma

    def reason(self, score: float) -> str:
        return f"{self.name} {score:.1f}x"


class Drift(_Run):
    """Directional run: the sum of the last ``return_window`` log returns (from ``Context.center``) in
    ``Context.runs_sigma`` units of that sum.

    A pump or a crash spread over several minutes is a large drift even when no single
    minute is extreme. Either direction is news.

    >>> from market_anomaly.core.baselines import CandleFeatures, Context
    >>> from market_anomaly.core.params import params_with
    >>> drift = Drift(params_with(runs={"return_window": 4, "warmup": 0}))
    >>> context = Context.of(center=np.zeros(5), runs_sigma=np.full(5, 0.001),
    ...                      features=CandleFeatures.of(log_return=np.full(5, -0.002)))
    >>> drift.score(context).tolist(), drift.reason(-4.0)
    ([nan, nan, nan, -4.0, -4.0], 'DRIFT 4.0σ')
    """

    name, column, key, group = "DRIFT", "drift", "drift", 1
    two_sided = True

    def __init__(self, params):
        super().__init__(params, params.runs.return_window)

    def run_values(self, context) -> np.ndarray:
        return context.features.log_return

    def score(self, context) -> np.ndarray:
        deviations = self.windows(context) - context.center[:, None]
        return deviations.sum(axis=1) / (context.runs_sigma * np.sqrt(self.window))


class Trend(_Run):
    """A steady run: the smallest same-direction move of the last ``trend_window`` candles, in ``Context.runs_sigma``.

    Every candle of the window must move the same way by at least the score (0 when the
    directions differ): a pump or a slide that builds minute after minute, which real
    markets rarely sustain even when single minutes or 5-minute sums are large.

    >>> from market_anomaly.core.baselines import CandleFeatures, Context
    >>> from market_anomaly.core.params import params_with
    >>> trend = Trend(params_with(runs={"trend_window": 3, "warmup": 0}))
    >>> context = Context.of(center=np.zeros(4), runs_sigma=np.full(4, 0.001),
    ...                      features=CandleFeatures.of(log_return=np.array([0.002, 0.003, 0.004, -0.001])))
    >>> trend.score(context).round(1).tolist(), trend.reason(2.0)
    ([nan, nan, 2.0, 0.0], 'TREND 2.0σ')
    """

    name, column, key, group = "TREND", "trend", "trend", 3

    def __init__(self, params):
        super().__init__(params, params.runs.trend_window)

    def run_values(self, context) -> np.ndarray:
        return context.features.log_return

    def score(self, context) -> np.ndarray:
        moves = (self.windows(context) - context.center[:, None]) / context.runs_sigma[:, None]
        with np.errstate(invalid="ignore"):
            return np.maximum(np.maximum(moves.min(axis=1), (-moves).min(axis=1)), 0.0)


class Reversal(_Run):
    """A move undone the next minute: ``min(|z_t-1|, |z_t|) - netting * |z_t-1 + z_t|`` for opposite signs, else 0.

    A price spike (a print far off the market that the next minute takes back, to where it
    was) is rare as a *pair*, even where single large returns are not; a partial pull-back
    after a real jump scores less than the pull-back (the level did not return). The net
    move of the pair is taken off at ``reversal_netting`` (0..1): the next minute's own
    natural move sits in that net move too, so taking all of it off (1) misses spikes whose
    next minute happened to move on; half of it (measured on the real candles) keeps a
    partial pull-back well below a spike that returns. Reads ``Context.zscore``.

    >>> from market_anomaly.core.baselines import Context
    >>> from market_anomaly.core.params import params_with
    >>> reversal = Reversal(params_with(runs={"reversal_netting": 0.5, "warmup": 0}))
    >>> reversal.score(Context.of(zscore=np.array([1.0, 9.0, -8.0, -3.0]))).tolist(), reversal.reason(7.5)
    ([nan, 0.0, 7.5, 0.0], 'REVERSAL 7.5σ')
    """

    name, column, key, group = "REVERSAL", "reversal", "reversal", 4

    def __init__(self, params):
        super().__init__(params, 2)
        self.netting = params.runs.reversal_netting

    def run_values(self, context) -> np.ndarray:
        return context.zscore

    def score(self, context) -> np.ndarray:
        pair = self.windows(context)
        with np.errstate(invalid="ignore"):
            size = np.minimum(np.abs(pair[:, 0]), np.abs(pair[:, 1])) - self.netting * np.abs(pair[:, 0] + pair[:, 1])
            return np.where(pair[:, 0] * pair[:, 1] < 0, np.maximum(size, 0.0), np.where(np.isnan(size), np.nan, 0.0))
