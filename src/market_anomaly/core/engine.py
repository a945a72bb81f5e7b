"""The per-symbol detection engine: candles + state in, decisions + state out.

The same code serves the Spark stream (one call per symbol and micro-batch) and offline
scoring (one call per symbol and file). Decisions do not depend on how a series is cut
into calls: every feature and baseline is a function of stream positions (see
``features``), and the state carries exactly the tails those need.

Input handling: candles are sorted by ``open_time``; of several candles with the same
``open_time`` the first wins; candles not after the last processed one are dropped (a
Kafka replay or a REST backfill of known minutes changes nothing).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from market_anomaly.core.consensus import consensus, group_surprise
from market_anomaly.core.calibration import surprise
from market_anomaly.core.detectors import (Burst, RecentScale, Drift, LearnedSurprise, ReturnZScore, Reversal, Trend,
                                               Volatility, VolumeRun, VolumeSpike)
from market_anomaly.core.features import RollingStats, candle_features, median_only
from market_anomaly.core.params import ModelParams
from market_anomaly.core.state import pack, unpack

DECISION_SCHEMA: list[tuple[str, str]] = [
    ("symbol", "object"), ("interval", "object"), ("open_time", "int64"), ("close_time", "int64"),
    ("close", "float64"), ("return_pct", "float64"), ("log_return", "float64"), ("range_pct", "float64"),
    ("volume", "float64"), ("volume_change", "float64"), ("volume_ratio", "float64"), ("range_ratio", "float64"),
    ("taker_buy_share", "float64"), ("window_mean", "float64"), ("window_std", "float64"),
    ("zscore", "float64"), ("volatility_z", "float64"), ("model_score", "float64"),
    ("volume_run", "float64"), ("burst", "float64"), ("drift", "float64"), ("trend", "float64"), ("reversal", "float64"),
    ("surprise", "float64"),
    ("votes", "int64"), ("is_anomaly", "bool"), ("confidence", "object"), ("reasons", "object"),
    ("market_event", "bool"), ("produced_at", "int64"),
]

# Columns beyond the decision record: volume_change (vs the previous minute), volume_ratio and range_ratio
# (vs their rolling medians), taker_buy_share (NaN when absent), window_mean/window_std (return %, last 60
# candles), zscore (robust, adaptive), volatility_z (window_std vs its own history), model_score (learned model,
# 1 = alarm level), volume_run (the last minutes' volume the range does not explain, x normal), burst (short
# realized volatility / long-run sigma), drift (a short run's summed return, in sigmas), trend (the smallest
# same-direction move of a steady run, in sigmas), reversal (a z-score undone by the next one; see
# detectors.Reversal), surprise (the fused calibrated surprise, -log10 tail probability; see calibration),
# market_event (set by mark_market_events). Floats are NaN while a detector's baseline is warming up.

INTERVAL_NAMES = {60_000: "1m", 180_000: "3m", 300_000: "5m", 900_000: "15m", 1_800_000: "30m",
                  3_600_000: "1h", 14_400_000: "4h", 86_400_000: "1d"}


def typed_frame(columns: dict[str, object], length: int, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """``DECISION_SCHEMA``'s columns in order, then the ``extra`` float columns, each built with its dtype
    (scalars broadcast).

    Typing each array up front instead of ``DataFrame.astype`` keeps a one-candle call (the
    stream's usual micro-batch per symbol) at a fraction of a millisecond of pandas overhead.
    """
    typed = {}
    for name, dtype in _schema(extra):
        values = np.asarray(columns[name])
        if values.ndim == 0:
            values = np.full(length, values.item(), dtype=object if dtype == "object" else dtype)
        typed[name] = values.astype(dtype, copy=False)
    return pd.DataFrame(typed, copy=False)


def _schema(extra: tuple[str, ...]) -> list[tuple[str, str]]:
    return DECISION_SCHEMA + [(name, "float64") for name in extra]


def empty_decisions(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return typed_frame({name: np.empty(0, dtype) for name, dtype in _schema(extra)}, 0, extra)


def stacked_frame(parts: list[tuple[dict[str, object], int]], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """One decisions frame from several ``DetectionEngine.decide`` results (a state bucket's symbols), in order,
    with the ``extra`` float columns the caller added to each result.

    One typed frame per bucket instead of one per symbol and a concat: pandas' per-frame cost
    was half of a micro-batch's Python time at one candle per symbol.
    """
    parts = [(columns, length) for columns, length in parts if length]
    if not parts:
        return empty_decisions(extra)
    stacked = {name: np.concatenate([np.broadcast_to(np.asarray(columns[name], dtype=object if dtype == "object"
                                                                else None), length)
                                     for columns, length in parts])
               for name, dtype in _schema(extra)}
    return typed_frame(stacked, sum(length for _, length in parts), extra)


def new_candles(candles: pd.DataFrame, after_open_time: int) -> pd.DataFrame:
    """Sorted, first of each ``open_time``, only after ``after_open_time``."""
    open_time = candles["open_time"].to_numpy(np.int64)
    if (np.diff(open_time) > 0).all():  # the stream's usual case: already in order, no duplicates
        return candles if open_time[0] > after_open_time else candles[open_time > after_open_time]
    ordered = candles.sort_values("open_time", kind="stable")
    ordered = ordered[~ordered["open_time"].duplicated(keep="first")]
    return ordered[ordered["open_time"].to_numpy(np.int64) > after_open_time]


class DetectionEngine:
    """Stateless apart from its parameters: the per-symbol state travels in and out of ``process``."""

    def __init__(self, params: ModelParams):
        self.params = params
        self.keep_group_surprise, self.group_surprise = False, None
        self.interval_name = INTERVAL_NAMES.get(params.interval_ms, f"{params.interval_ms}ms")

    def process(self, symbol: str, candles: pd.DataFrame, state: bytes | None) -> tuple[pd.DataFrame, bytes]:
        """Decisions (``DECISION_SCHEMA``, one row per new candle, by ``open_time``) and the new state."""
        columns, length, new_state = self.decide(symbol, candles, state)
        return (typed_frame(columns, length) if length else empty_decisions()), new_state

    def decide(self, symbol: str, candles: pd.DataFrame, state: bytes | None
               ) -> tuple[dict[str, object], int, bytes]:
        """``process`` before the DataFrame: (columns by ``DECISION_SCHEMA`` name, arrays or scalars, number of
        decisions, new state). Callers deciding many symbols at once build one frame (``stacked_frame``)."""
        params = self.params
        memory = unpack(state) if state else {}
        last_open_time, last_close, last_volume, seen = (
            memory["engine.last"].tolist() if "engine.last" in memory else [-1, np.nan, np.nan, 0])
        candles = new_candles(candles, int(last_open_time))
        if candles.empty:
            return {}, 0, state if state else pack({})
        zscore_detector = ReturnZScore(params.return_zscore, params.refresh, params.guard)
        volatility_detector = Volatility(params.volatility, params.refresh, params.return_zscore.min_sigma_pct)
        volume_detector = VolumeSpike(params.volume, params.refresh, params.guard)
        volume_run, burst, drift = VolumeRun(params.runs), Burst(params.runs), Drift(params.runs)
        reversal, trend = Reversal(params.runs), Trend(params.runs)
        learned = LearnedSurprise(params.learned, params.model)
        range_level = RollingStats(params.range.window, params.refresh, median_only, params.guard)
        detectors = (zscore_detector, volatility_detector, volume_detector, volume_run, burst, drift, trend,
                     reversal, learned)
        for detector in detectors:
            detector.restore(memory)
        range_level.restore(memory, "range")
        recent_scale = RecentScale(params.runs, params.refresh, params.return_zscore.min_sigma_pct)
        recent_scale.restore(memory)

        features = candle_features(candles, int(last_open_time), last_close, last_volume, params.interval_ms,
                                   params.range.floor_pct)
        positions = int(seen) + np.arange(len(candles))
        zscore, center = zscore_detector.score_and_center(features.log_return)
        long_sigma = recent_scale.scale(features.log_return)
        volatility_z, window_mean, window_std = volatility_detector.score(features.return_pct)
        volume_ratio = volume_detector.score(features.volume)
        log_range_ratio = features.log_range - range_level.baselines(features.log_range)[0]
        log_volume_ratio = np.log(volume_ratio)
        run_volume = volume_run.score(log_volume_ratio, log_range_ratio)
        burst_score = burst.score(features.log_return, center, long_sigma)
        drift_score = drift.score(features.log_return, center, long_sigma)
        reversal_score = reversal.score(zscore)
        trend_score = trend.score(features.log_return, center, long_sigma)
        model_score = learned.score(zscore, log_volume_ratio, log_range_ratio)

        zscore_detector.learn(features.log_return)
        volatility_detector.learn(features.return_pct)
        volume_detector.learn(features.volume)
        volume_run.learn(log_volume_ratio, log_range_ratio)
        burst.learn(features.log_return)
        drift.learn(features.log_return)
        reversal.learn(zscore)
        trend.learn(features.log_return)
        range_level.learn(features.log_range)
        recent_scale.learn(features.log_return)
        learned.learn(zscore, log_volume_ratio)

        scores = dict(zip((d.name for d in detectors),
                          (zscore, volatility_z, volume_ratio, run_volume, burst_score, drift_score, trend_score,
                           reversal_score, model_score)))
        eligible = {d.name: d.votes(scores[d.name], positions) for d in detectors}
        surprises = detector_surprise(scores, params.calibration)
        votes, is_anomaly, confidence, reasons, fused = consensus(
            eligible, {d.name: d.reason for d in detectors}, scores, surprises, params.consensus, params.calibration,
            own_votes={d.name: eligible[d.name] for d in detectors if d.own_vote})
        if self.keep_group_surprise:  # training calibrates pairs of groups on these
            names = list(eligible)
            self.group_surprise = group_surprise(names, np.column_stack(
                [np.where(eligible[name], surprises[name], 0.0) for name in names]), params.consensus.groups)

        open_time = candles["open_time"].to_numpy(np.int64)
        columns = {
            "symbol": symbol,
            "interval": _column_or(candles, "interval", self.interval_name),
            "open_time": open_time,
            "close_time": _column_or(candles, "close_time", open_time + params.interval_ms - 1),
            "close": features.close, "return_pct": features.return_pct, "log_return": features.log_return,
            "range_pct": features.range_pct, "volume": features.volume, "volume_change": features.volume_change,
            "volume_ratio": volume_ratio, "range_ratio": np.exp(log_range_ratio),
            "taker_buy_share": features.taker_buy_share,
            "window_mean": window_mean, "window_std": window_std, "zscore": zscore,
            "volatility_z": volatility_z, "model_score": model_score,
            "volume_run": run_volume, "burst": burst_score, "drift": drift_score,
            "trend": trend_score, "reversal": reversal_score, "surprise": fused,
            "votes": votes, "is_anomaly": is_anomaly, "confidence": confidence, "reasons": reasons,
            "market_event": False,
            "produced_at": _column_or(candles, "produced_at", 0),
        }
        new_memory = {
            "engine.last": np.array([open_time[-1], features.close[-1], features.volume[-1], positions[-1] + 1]),
            **{name: values for detector in detectors for name, values in detector.state().items()},
            **range_level.state("range"), **recent_scale.state(),
        }
        return columns, len(candles), pack(new_memory)


TWO_SIDED = ("Z-SCORE", "DRIFT")  # detectors whose size is the absolute score (either direction is news)


def calibration_scores(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The quantity each detector's calibration table is about (absolute value for the two-sided ones)."""
    return {name: np.abs(values) if name in TWO_SIDED else values for name, values in scores.items()}


def detector_surprise(scores: dict[str, np.ndarray], calibration) -> dict[str, np.ndarray]:
    """Calibrated surprise per detector (0 for detectors without a table, e.g. before ``train``)."""
    return {name: surprise(calibration.get(name), values) for name, values in calibration_scores(scores).items()}


def _column_or(candles: pd.DataFrame, name: str, default) -> np.ndarray:
    """The column where present, ``default`` where it is missing or null."""
    if name not in candles.columns:
        return np.broadcast_to(default, len(candles)).copy()
    column = candles[name].to_numpy()
    missing = pd.isna(column)
    return np.where(missing, default, column) if missing.any() else column
