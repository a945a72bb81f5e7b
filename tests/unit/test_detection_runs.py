"""Runs detectors' options: a sustained volume run (every minute heavy), a trimmed burst (one jump is no burst), the
volume surge (a run against the symbol's own busiest minutes), absorbed volume (a run at a price that did not move) and
the trades run (a crowd, sustained)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from market_anomaly.core.baselines import Context
from market_anomaly.core.detectors import AbsorbedVolume, Burst, TradesRun, VolumeRun, VolumeSurge
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


def test_a_volume_surge_is_measured_against_the_symbols_own_busy_minutes():
    """The same 10x run for 3 minutes: a surge on a liquid pair (busy minutes 2-3x), ordinary on a thin one
    (most minutes without a trade, single trades at 50-200x)."""
    rng = np.random.default_rng(4)
    liquid = rng.normal(0.0, 0.4, 600)
    thin = np.where(rng.random(600) < 0.9, np.log(0.01), rng.uniform(np.log(50), np.log(200), 600))
    run = np.log(np.full(3, 10.0))
    surge = {}
    for name, history in (("liquid", liquid), ("thin", thin)):
        scores = VolumeSurge(runs(volume_window=3)).score(volume_context(np.concatenate([history, run])))
        surge[name], ordinary = scores[-1], np.nanmax(scores[300:600])
        if name == "liquid":
            assert surge[name] > 2 * ordinary  # far beyond anything its own history shows
    assert surge["liquid"] > 1.5 and surge["thin"] < 0.6
    assert VolumeRun(runs(volume_window=3)).score(volume_context(run))[-1] == pytest.approx(10.0)  # the same run


def test_volume_surge_options_are_validated_and_optional():
    document = json.loads(json.dumps(DEFAULTS))
    document["volume"]["surge_quantile"] = 1.0
    with pytest.raises(InvalidParams, match="surge_quantile"):
        params_from_dict(document)
    for key in ("surge_window", "surge_quantile", "surge_floor"):  # files written before VOLUME SURGE
        del document["volume"][key]
    params = params_from_dict(document)
    assert (params.volume.surge_window, params.volume.surge_quantile, params.volume.surge_floor) == (240, 0.99, 0.5)


def test_absorbed_volume_is_a_heavy_run_at_a_price_that_did_not_move():
    """A thin pair (tick 0.5 % of the price): 3 minutes at 20x its traded level with the close where it was score
    20x; the same minutes with a one-tick move in the middle, a liquid pair whose close moves every minute, a
    minute without a trade and quiet minutes (half the traded level) all score the floor (0.1x)."""
    tick = np.full(3, 0.005)
    heavy, floor = np.log(np.full(3, 20.0)), np.exp(-2.3)

    def absorbed(log_return, log_volume_ratio=heavy, tick_return=tick):
        context = Context.of(log_volume_ratio=log_volume_ratio, log_range_ratio=np.zeros(3),
                             features=CandleFeatures.of(log_return=log_return, tick_return=tick_return))
        return AbsorbedVolume(runs(volume_window=3)).score(context)[-1]

    assert absorbed(np.zeros(3)) == pytest.approx(20.0)
    assert absorbed(np.array([0.0, 0.005, 0.0])) == pytest.approx(floor)
    assert absorbed(np.array([0.0004, -0.0003, 0.0005]), tick_return=np.full(3, 1e-6)) == pytest.approx(floor)
    assert absorbed(np.zeros(3), log_volume_ratio=np.log(np.array([20.0, 1e-12, 20.0]))) == pytest.approx(floor)
    assert absorbed(np.zeros(3), log_volume_ratio=np.log(np.full(3, 0.5))) == pytest.approx(floor)
    assert VolumeRun(runs(volume_window=3)).score(volume_context(heavy))[-1] == pytest.approx(20.0)  # moved or not


def test_trades_run_is_a_crowd_sustained_where_one_large_print_is_not():
    """A thin pair trading 2 trades a minute when it trades (most minutes silent): 3 minutes of 60-90 trades score
    30x; one large print after silence (1 trade, whatever its volume), a single busy minute between ordinary ones,
    and candles without a trade count (NaN: ineligible, not 0) do not."""
    usual = np.tile([0.0, 2.0, 0.0, 2.0, 0.0, 2.0], 50)  # 300 minutes: the level is 2

    def last_score(tail):
        trades = np.concatenate([usual, tail])
        context = Context.of(center=np.zeros(len(trades)), features=CandleFeatures.of(trades=trades))
        return TradesRun(params_with(refresh=1, guard=0, runs={"volume_window": 3, "warmup": 0})).score(context)[-1]

    assert last_score(np.array([60.0, 90.0, 75.0])) == pytest.approx(30.0)
    assert last_score(np.array([0.0, 0.0, 1.0])) == pytest.approx(np.exp(-2.3))  # silence, then one print
    assert last_score(np.array([2.0, 200.0, 2.0])) == pytest.approx(1.0)
    assert np.isnan(last_score(np.array([60.0, np.nan, 75.0])))
