"""Training: fit the learned model on historical candles and write ``model_params.json`` + the model file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from market_anomaly.detection.calibration import fit_table
from market_anomaly.detection.consensus import pair_keys
from market_anomaly.detection.engine import DetectionEngine, calibration_scores
from market_anomaly.detection.learned import INPUT_NAMES
from market_anomaly.detection.params import DEFAULTS, ModelParams, params_from_dict
from market_anomaly.detection.detectors import LearnedSurprise

DEFAULT_ALARM_QUANTILE = 0.999


def score_series(params: ModelParams, series: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each series through a fresh engine state in one call (offline scoring)."""
    engine = DetectionEngine(params)
    return {key: engine.process(key.split("@")[0], frame, None)[0] for key, frame in series.items()}


def train(series: dict[str, pd.DataFrame], base: dict | None = None,
          alarm_quantile: float = DEFAULT_ALARM_QUANTILE, sources: list[str] | None = None) -> ModelParams:
    """Fit the learned model, calibrate every detector, and set the alarm threshold for the false-alarm budget.

    Three passes over the training candles, nothing else (no held-out data, no injected events):

    1. fit the learned model on the candles' inputs (after warm-up), alarm level at ``alarm_quantile``;
    2. score every detector and store its calibration table (``calibration.fit_table``: score -> surprise),
       then, with ``consensus.pairs``, one for each pair of detector groups (both at least this surprising);
    3. fuse the calibrated surprises and set ``consensus.threshold`` to the lowest level (on a
       0.05 grid, at least ``consensus.vote_surprise``) at which the training candles raise at most
       ``consensus.false_alarm_budget`` alarm episodes per symbol-day, counting the flags of the
       rule path (``consensus.required``/``alone``) too.

    ``base`` is the parameter document to start from (default ``DEFAULTS``); windows, floors and
    the budget come from it, the fitted values are filled in and the model is attached.
    """
    document = json.loads(json.dumps(base or DEFAULTS))
    document["calibration"] = {}
    untrained = params_from_dict(document)
    learned = LearnedSurprise(untrained.learned)
    inputs = []
    for decisions in score_series(untrained, series).values():
        series_inputs = LearnedSurprise(untrained.learned).inputs(
            decisions["zscore"].to_numpy(), np.log(decisions["volume_ratio"].to_numpy()),
            np.log(decisions["range_ratio"].to_numpy()))
        inputs.append(series_inputs[untrained.learned.warmup:])
    learned.fit(np.concatenate(inputs) if inputs else np.empty((0, len(INPUT_NAMES))), alarm_quantile)
    document["learned"].update(typical_score=round(learned.typical, 6), alarm_score=round(learned.alarm, 6))

    uncalibrated = params_from_dict(document, model=learned.model)
    scored = score_series(uncalibrated, series)
    warmups = {"Z-SCORE": uncalibrated.return_zscore.warmup, "VOLATILITY": uncalibrated.volatility.warmup,
               "VOLUME": uncalibrated.volume.warmup, "VOLUME RUN": uncalibrated.runs.warmup,
               "BURST": uncalibrated.runs.warmup, "DRIFT": uncalibrated.runs.warmup, "REVERSAL": uncalibrated.runs.warmup,
               "TREND": uncalibrated.runs.warmup,
               "MODEL": uncalibrated.learned.warmup}
    pooled = {name: [] for name in warmups}
    for decisions in scored.values():
        values = calibration_scores({name: decisions[column].to_numpy() for name, column in SCORE_COLUMNS.items()})
        for name, warmup in warmups.items():
            pooled[name].append(values[name][warmup:])
    document["calibration"] = {name: fit_table(np.concatenate(parts)) for name, parts in pooled.items()}
    consensus = uncalibrated.consensus
    if consensus.pairs:
        engine = DetectionEngine(params_from_dict(document, model=learned.model))
        engine.keep_group_surprise = True
        groups = []
        for key, frame in series.items():
            engine.process(key.split("@")[0], frame, None)
            groups.append(engine.group_surprise[uncalibrated.runs.warmup:])
        groups = np.concatenate(groups)
        for i, j, key in pair_keys(consensus.groups):
            document["calibration"][key] = fit_table(np.minimum(groups[:, i], groups[:, j]))

    document["consensus"]["threshold"] = 1e9  # the rule path alone
    calibrated = params_from_dict(document, model=learned.model)
    decided = score_series(calibrated, series)
    fused = {key: decisions["surprise"].to_numpy() for key, decisions in decided.items()}
    rule = {key: decisions["is_anomaly"].to_numpy(bool) for key, decisions in decided.items()}
    threshold, rate = choose_threshold(fused, {key: frame["open_time"].to_numpy() for key, frame in series.items()},
                                       consensus.false_alarm_budget, consensus.vote_surprise, rule)
    document["consensus"]["threshold"] = threshold
    document["trained_on"] = {
        "sources": [str(source) for source in sources or []],
        "series": {key: {"candles": len(frame), "from": _iso(frame["open_time"].min()),
                         "to": _iso(frame["open_time"].max())} for key, frame in series.items()},
        "candles": int(sum(len(frame) for frame in series.values())),
        "model": f"minor principal components of {', '.join(INPUT_NAMES)} "
                 f"(leading {untrained.learned.skip_components} ignored)",
        "alarm_quantile": alarm_quantile,
        "threshold": f"fused surprise {threshold} gives {rate:.3f} alarm episodes per symbol-day on these candles "
                     f"(budget {consensus.false_alarm_budget})",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return params_from_dict(document, model=learned.model)


SCORE_COLUMNS = {"Z-SCORE": "zscore", "VOLATILITY": "volatility_z", "VOLUME": "volume_ratio",
                 "VOLUME RUN": "volume_run", "BURST": "burst", "DRIFT": "drift", "TREND": "trend", "REVERSAL": "reversal",
                 "MODEL": "model_score"}
EPISODE_GAP_MS = 5 * 60_000


def alarm_episodes(flag_times_ms: np.ndarray) -> int:
    """Flags less than 5 minutes apart are one episode.

    >>> alarm_episodes(np.array([0, 60_000, 240_000, 600_000]) )  # 0-4 min one episode, 10 min another
    2
    """
    times = np.sort(flag_times_ms)
    return int(len(times) and 1 + np.count_nonzero(np.diff(times) >= EPISODE_GAP_MS))


def choose_threshold(fused: dict[str, np.ndarray], open_times: dict[str, np.ndarray], budget: float,
                     lowest: float, rule: dict[str, np.ndarray] | None = None, step: float = 0.05
                     ) -> tuple[float, float]:
    """The lowest threshold (multiple of ``step``, >= ``lowest``) with at most ``budget`` episodes per symbol-day.

    Episodes count flags of the fused path or of the ``rule`` path (flags per candle, already decided).
    """
    rule = rule or {key: np.zeros(len(values), dtype=bool) for key, values in fused.items()}
    days = sum(len(times) for times in open_times.values()) / (24 * 60)
    top = max((float(np.nanmax(values)) for values in fused.values() if len(values)), default=lowest)
    candidates = np.round(np.arange(np.ceil(lowest / step) * step, max(top, lowest) + 2 * step, step), 4)

    def rate(threshold: float) -> float:
        return sum(alarm_episodes(open_times[key][(values >= threshold) | rule[key]])
                   for key, values in fused.items()) / days

    low, high = 0, len(candidates) - 1  # episodes fall (weakly) as the threshold rises: bisect
    while low < high:
        middle = (low + high) // 2
        if rate(candidates[middle]) <= budget:
            high = middle
        else:
            low = middle + 1
    return float(candidates[low]), rate(candidates[low])


def write_params(params: ModelParams, path: Path | str) -> Path:
    """Write the model file, then the JSON (each atomically), so a watcher never sees half a file."""
    path = Path(path)
    model_path = path.resolve().parent / params.learned.file
    _atomic_write(model_path, params.model.save)
    _atomic_write(path, lambda handle: handle.write((json.dumps(params.to_json(), indent=2) + "\n").encode()))
    return model_path


def _atomic_write(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))
