"""Training: fit the learned model on historical candles and write ``model_params.json`` + the model file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from market_anomaly.detection.engine import DetectionEngine
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
    """Fit the learned model on the candles' inputs (after warm-up) and calibrate its alarm level.

    ``base`` is the parameter document to start from (default ``DEFAULTS``); the result
    has its ``learned`` and ``trained_on`` sections filled in and the fitted model attached.
    """
    document = json.loads(json.dumps(base or DEFAULTS))
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
    document["trained_on"] = {
        "sources": [str(source) for source in sources or []],
        "series": {key: {"candles": len(frame), "from": _iso(frame["open_time"].min()),
                         "to": _iso(frame["open_time"].max())} for key, frame in series.items()},
        "candles": int(sum(len(frame) for frame in series.values())),
        "model": f"minor principal components of {', '.join(INPUT_NAMES)} "
                 f"(leading {untrained.learned.skip_components} ignored)",
        "alarm_quantile": alarm_quantile,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return params_from_dict(document, model=learned.model)


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
