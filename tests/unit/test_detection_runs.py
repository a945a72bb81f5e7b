"""Runs detectors' options: a sustained volume run (every minute heavy) and a trimmed burst (one jump is no burst)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from market_anomaly.core.baselines import Context
from market_anomaly.core.detectors import Burst, VolumeRun
from market_anomaly.core.features import CandleFeatures
from market_anomaly.core.params import DEFAULTS, InvalidParams, params_from_dict, params_with


def runs(**changes):
    return params_with(runs={"warmup": 0, **changes})


def volume_context(log_volume_ratio: np.ndarray) -> Context:
    return Context.of(log_volume_ratio=log_volume_ratio, log_range_ratio=np.zeros(len(log_volume_ratio)))


def returns_context(log_return: np.ndarray) -> Context:
    return Context.of(center=np.zeros(len(log_return)), runs_sigma=np.full(len(log_return), 0.001),
                      features=CandleFeatures.of(log_return=log_return))


def test_sustained_volume_run_needs_every_minute_heavy():
    one_print = np.log(np.array([1.0, 1.0, 100.0, 1.0, 1.0]))  # one huge minute, then ordinary ones
    burst = np.log(np.array([1.0, 1.0, 10.0, 10.0, 10.0]))
    mean_run, min_run = VolumeRun(runs(volume_combine="mean")), VolumeRun(runs(volume_combine="min"))
    assert mean_run.score(volume_context(one_print))[-1] == pytest.approx(100 ** (1 / 3))
    assert min_run.score(volume_context(one_print))[-1] == pytest.approx(1.0)
    assert min_run.score(volume_context(burst))[-1] == pytest.approx(10.0) == mean_run.score(volume_context(burst))[-1]


def test_trimmed_burst_ignores_one_jump_but_not_many_large_minutes():
    jump = returns_context(np.array([0.0, 0.0, 0.0, 0.0, 0.02]))
    busy = returns_context(np.array([0.006, -0.007, 0.005, -0.006, 0.008]))
    plain, trimmed = Burst(runs(burst_trim=0)), Burst(runs(burst_trim=1))
    assert plain.score(jump)[-1] == pytest.approx(20 / np.sqrt(5))
    assert trimmed.score(jump)[-1] == pytest.approx(0.0)
    assert trimmed.score(busy)[-1] == pytest.approx(np.sqrt((36 + 49 + 25 + 36) / 4))
    two = Burst(runs(burst_trim=2))
    assert two.score(busy)[-1] == pytest.approx(np.sqrt((36 + 25 + 36) / 3))


def test_runs_options_are_validated_and_optional():
    document = json.loads(json.dumps(DEFAULTS))
    document["runs"]["volume_combine"] = "median"
    with pytest.raises(InvalidParams, match="volume_combine"):
        params_from_dict(document)
    del document["runs"]["volume_combine"], document["runs"]["burst_trim"]  # files written before these options
    params = params_from_dict(document)
    assert (params.runs.volume_combine, params.runs.burst_trim) == ("mean", 0)
