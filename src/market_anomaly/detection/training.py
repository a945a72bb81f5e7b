"""Training: fit the learned model on historical candles and write ``model_params.json`` + the model file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from market_anomaly.detection.calibration import fit_table
from market_anomaly.detection.consensus import candidates, pair_keys
from market_anomaly.detection.engine import DetectionEngine, calibration_scores
from market_anomaly.detection.learned import INPUT_NAMES
from market_anomaly.detection.params import DEFAULTS, ModelParams, params_from_dict
from market_anomaly.detection.detectors import LearnedSurprise

DEFAULT_ALARM_QUANTILE = 0.999
DEFAULT_TUNE_INJECTIONS = 1500  # events injected into the training candles to tune the fusion's offsets


def score_series(params: ModelParams, series: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each series through a fresh engine state in one call (offline scoring)."""
    engine = DetectionEngine(params)
    return {key: engine.process(key.split("@")[0], frame, None)[0] for key, frame in series.items()}


def train(series: dict[str, pd.DataFrame], base: dict | None = None,
          alarm_quantile: float = DEFAULT_ALARM_QUANTILE, sources: list[str] | None = None,
          tune_injections: int = DEFAULT_TUNE_INJECTIONS, tune_seed: int = 0) -> ModelParams:
    """Fit the learned model, calibrate every detector, and set the alarm threshold for the false-alarm budget.

    Three passes over the training candles, nothing else (no held-out data, no injected events):

    1. fit the learned model on the candles' inputs (after warm-up), alarm level at ``alarm_quantile``;
    2. score every detector and store its calibration table (``calibration.fit_table``: score -> surprise),
       then, with ``consensus.pairs``, one for each pair of detector groups (both at least this surprising);
    3. with ``tune_injections``: inject that many labelled events into *these* candles and
       tune ``consensus.offsets`` (``tune_offsets``) for the most events caught within 5 minutes
       at the budget below;
    4. fuse the calibrated surprises and set ``consensus.threshold`` to the lowest level (on a
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

    tuning = {}
    if tune_injections > 0:
        offsets, tuning = tune_offsets(params_from_dict(document, model=learned.model), series, tune_injections,
                                       tune_seed)
        document["consensus"]["offsets"] = offsets
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
        "tuning": tuning,
        "threshold": f"fused surprise {threshold} gives {rate:.3f} alarm episodes per symbol-day on these candles "
                     f"(budget {consensus.false_alarm_budget})",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return params_from_dict(document, model=learned.model)


TUNE_STEPS = (-1.0, -0.5, 0.5, 1.0)
TUNE_SWEEPS = 2
MAX_OFFSET = 2.0
DETECTION_WINDOW = 5  # candles: an event counts when flagged within 5 minutes of its start


def tune_offsets(params: ModelParams, series: dict[str, pd.DataFrame], injections: int, seed: int
                 ) -> tuple[dict[str, float], dict]:
    """Offsets per fused candidate that catch the most events injected into the *training* candles.

    Events of every kind (``injection.inject_random``, after the warm-up, in rounds like
    ``evaluate``, at most ``TUNE_MAX_ROUNDS``) are scored; for each event, each candidate's largest surprise in its first
    5 minutes. Coordinate ascent over the offsets (steps ``TUNE_STEPS``, within +-``MAX_OFFSET``):
    a change is kept when, with the threshold re-set for the false-alarm budget on the
    untouched training candles, more events are caught. Returns (offsets, summary).
    """
    from market_anomaly.detection.injection import inject_random, injection_slots

    consensus = params.consensus
    engine = DetectionEngine(params)
    engine.keep_group_surprise = True

    def candidate_matrix(key: str, frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        engine.process(key.split("@")[0], frame, None)
        found = candidates(engine.group_surprise, consensus.groups, params.calibration, consensus.pairs)
        return list(found), np.column_stack(list(found.values()))

    normal, open_times = {}, {}
    for key, frame in series.items():
        frame = frame.sort_values("open_time", kind="stable").reset_index(drop=True)
        names, normal[key] = candidate_matrix(key, frame)
        open_times[key] = frame["open_time"].to_numpy()
    earliest = max(params.return_zscore.warmup, params.runs.warmup, params.learned.warmup, params.volume.warmup)
    slots = len(injection_slots(series, TUNE_MIN_GAP, earliest))
    if slots < 2:
        return {}, {"injections": 0}
    rng = np.random.default_rng(seed)
    events, kinds, remaining = [], [], injections
    remaining = min(remaining, TUNE_MAX_ROUNDS * max(1, slots // 2))  # short histories: fewer events, not more rounds
    while remaining > 0:
        count = min(max(1, slots // 2), remaining)
        injected, labels = inject_random(series, count, rng, min_gap=TUNE_MIN_GAP, earliest=earliest)
        matrices = {key: candidate_matrix(key, frame)[1] for key, frame in injected.items()
                    if any(label["symbol"] == key for label in labels)}
        for label in labels:
            times = injected[label["symbol"]]["open_time"].to_numpy()
            rows = (times >= label["open_time"]) & (times < label["open_time"] + DETECTION_WINDOW * params.interval_ms)
            events.append(matrices[label["symbol"]][rows].max(axis=0))
            kinds.append(label["kind"])
        remaining -= count
    events = np.array(events)

    def outcome(offsets: np.ndarray) -> tuple[float, float]:
        fused = {key: (matrix + offsets).max(axis=1) for key, matrix in normal.items()}
        threshold, _ = choose_threshold(fused, open_times, consensus.false_alarm_budget, consensus.vote_surprise)
        return float(np.mean((events + offsets).max(axis=1) >= threshold)), threshold

    offsets = np.zeros(len(names))
    start = best = outcome(offsets)[0]
    for _ in range(TUNE_SWEEPS):
        for column in range(len(names)):
            for step in TUNE_STEPS:
                trial = offsets.copy()
                trial[column] = np.clip(trial[column] + step, -MAX_OFFSET, MAX_OFFSET)
                recall = outcome(trial)[0]
                if recall > best + 1e-12:
                    best, offsets = recall, trial
    summary = {"injections": int(len(events)), "training_recall_untuned": round(start, 4),
               "training_recall_tuned": round(best, 4), "seed": seed}
    return {name: float(value) for name, value in zip(names, offsets) if value}, summary


TUNE_MIN_GAP = 240
TUNE_MAX_ROUNDS = 40


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
