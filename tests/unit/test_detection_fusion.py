"""Calibrated fusion: surprise tables, pairs of groups, the budgeted threshold, and the runs detectors in the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from market_anomaly.core import DetectionEngine, InvalidParams
from market_anomaly.core.calibration import MAX_SURPRISE, calibration_problem, fit_table, surprise
from market_anomaly.core.consensus import fuse
from market_anomaly.core.params import pair_keys
from market_anomaly.core.params import params_from_dict
from market_anomaly.training.train import alarm_episodes, choose_threshold, score_series, TrainConfig, train
from support import market, small_document


@pytest.fixture(scope="module")
def trained():
    history = {"AAAUSDT": market(6000, seed=11, symbol="AAAUSDT"), "BBBUSDT": market(6000, seed=12, symbol="BBBUSDT")}
    return history, train(history, TrainConfig(base=small_document()))


def test_surprise_is_minus_log10_of_the_training_tail_and_grows_beyond_it():
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=200_000)  # P(X > x) = exp(-x): surprise = x / ln 10
    table = fit_table(scores)
    x = np.array([1.0, 3.0, 6.0, 9.0])
    np.testing.assert_allclose(surprise(table, x), x / np.log(10), atol=0.25)  # the last one: 24 of 200,000
    beyond = surprise(table, np.array([20.0, 40.0, 1e9]))
    assert beyond[0] > surprise(table, np.array([9.0]))[0] and beyond[0] < beyond[1] <= beyond[2] == MAX_SURPRISE
    assert surprise(table, np.array([np.nan]))[0] == 0.0 and surprise(None, np.array([5.0]))[0] == 0.0
    assert calibration_problem(table) is None


def test_constant_scores_still_give_a_usable_table():
    table = fit_table(np.r_[np.zeros(5000), 2.0])
    assert calibration_problem(table) is None
    assert surprise(table, np.array([0.0]))[0] == 0.0 and surprise(table, np.array([2.0]))[0] > 3


@pytest.mark.parametrize("table, problem", [
    ({"scores": [1.0, 2.0]}, "expected an object"),
    ({"scores": [1.0, 2.0], "surprise": [0.0], "tail_slope": 1.0}, "as many finite numbers"),
    ({"scores": [2.0, 1.0], "surprise": [0.0, 1.0], "tail_slope": 1.0}, "increase"),
    ({"scores": [1.0, 2.0], "surprise": [0.0, 1.0], "tail_slope": 0}, "tail_slope"),
])
def test_malformed_calibration_tables_are_rejected(table, problem):
    assert problem in calibration_problem(table)
    document = small_document()
    document["calibration"] = {"VOLUME": table}
    with pytest.raises(InvalidParams, match="calibration.VOLUME"):
        params_from_dict(document)


def test_pairs_count_two_rare_readings_together_as_rarer():
    groups = (("Z-SCORE",), ("MODEL",))
    rng = np.random.default_rng(2)
    independent = rng.exponential(size=(100_000, 2)) / np.log(10)  # two independent surprises
    (_, _, key), = pair_keys(groups)
    assert key == "Z-SCORE & MODEL"
    calibration = {key: fit_table(independent.min(axis=1))}
    both = np.array([[2.5, 2.5], [2.5, 0.0], [0.0, 0.0]])
    fused = fuse(both, groups, calibration, pairs=True)
    assert fused[0] > 4.5  # each one in 300, together about one in 100,000
    assert fused[1] == 2.5 and fused[2] == 0.0
    assert fuse(both, groups, calibration, pairs=False).tolist() == [2.5, 2.5, 0.0]


def test_choose_threshold_takes_the_lowest_level_within_the_budget():
    minutes = np.arange(2 * 1440) * 60_000  # two days
    fused = np.zeros(len(minutes))
    fused[[100, 101, 500, 900, 1500]] = [6.0, 6.5, 5.0, 4.0, 3.5]
    threshold, rate = choose_threshold({"A": fused}, {"A": minutes}, budget=1.0, lowest=3.0)
    assert threshold == 4.05 and rate == 1.0  # episodes at 100-101 and 500: 2 in 2 days
    rule = np.zeros(len(minutes), dtype=bool)
    rule[2000] = True  # an episode of the rule path counts too
    threshold, rate = choose_threshold({"A": fused}, {"A": minutes}, 1.0, 3.0, rule={"A": rule})
    assert threshold == 5.05 and rate == 1.0


def test_train_meets_its_false_alarm_budget_on_the_training_candles(trained):
    history, params = trained
    assert params.consensus.threshold >= params.consensus.vote_surprise
    assert set(params.calibration) >= {"Z-SCORE", "VOLUME RUN", "BURST", "DRIFT", "TREND", "REVERSAL", "MODEL"}
    assert {key for _, _, key in pair_keys(params.consensus.groups)} <= set(params.calibration)
    decisions = score_series(params, history)
    episodes = sum(alarm_episodes(d["open_time"].to_numpy()[d["is_anomaly"].to_numpy()]) for d in decisions.values())
    days = sum(len(frame) for frame in history.values()) / 1440
    assert episodes / days <= params.consensus.false_alarm_budget
    assert json.loads(json.dumps(params.to_json()))["calibration"] == params.to_json()["calibration"]


def test_train_sets_confidence_levels_by_their_rarity_on_the_training_candles(trained):
    history, params = trained
    margins = params.consensus.confidence
    assert margins["LOW"] == 0.0 <= margins["MEDIUM"] <= margins["HIGH"]
    decisions = score_series(params, history)
    days = sum(len(d) for d in decisions.values()) / 1440  # both series are liquid: the levels count both
    for level, days_per_episode in (("MEDIUM", 7.0), ("HIGH", 30.0)):
        start = params.consensus.threshold + margins[level]
        episodes = sum(alarm_episodes(d["open_time"].to_numpy()[d["surprise"].to_numpy() >= start])
                       for d in decisions.values())
        assert episodes / days <= 1 / days_per_episode  # at most once a symbol-week / -month here
        assert f"fused surprise {round(start, 4)}" in params.trained_on["confidence"]["liquid"][level]
        # and what the level names is what an anomaly gets from that surprise up
        levels = {confidence for d in decisions.values()
                  for confidence in d["confidence"][d["is_anomaly"] & (d["surprise"] >= start)]}
        assert levels <= ({"MEDIUM", "HIGH"} if level == "MEDIUM" else {"HIGH"})


def test_sustained_volume_and_a_steady_pump_are_flagged_with_their_reasons(trained):
    _, params = trained
    engine = DetectionEngine(params)
    candles = market(2000, seed=13)
    median = candles["volume"].iloc[1440:1500].median()
    candles.loc[1500:1503, "volume"] = 25 * median  # four minutes of 25x volume, price untouched
    decisions, _ = engine.process("TESTUSDT", candles, None)
    flagged = decisions.iloc[1500:1504]
    assert flagged["is_anomaly"].any() and flagged["volume_run"].max() > 10
    assert any("VOLUME" in reasons for reasons in flagged["reasons"][flagged["is_anomaly"]])
    pumped = market(2000, seed=14)
    rise = np.exp(np.cumsum(np.full(8, 0.006)))  # +0.6 % a minute for 8 minutes, then held
    factor = np.concatenate([np.ones(1500), rise, np.full(492, rise[-1])])
    for column in ("open", "high", "low", "close"):
        pumped[column] = pumped[column] * (factor if column != "open" else np.r_[1.0, factor[:-1]])
    decisions, _ = engine.process("TESTUSDT", pumped, None)
    window = decisions.iloc[1500:1505]
    assert window["is_anomaly"].any() and window["trend"].max() > 3
    assert set(window["confidence"][window["is_anomaly"]]) <= {"LOW", "MEDIUM", "HIGH"}
    assert (decisions["confidence"][~decisions["is_anomaly"]] == "NONE").all()


def test_tuning_on_injections_into_the_training_candles_never_loses_events(trained):
    _, params = trained
    tuning = params.trained_on["tuning"]
    assert tuning["injections"] > 0 and tuning["training_recall_tuned"] >= tuning["training_recall_untuned"]
    labels = {"/".join(group) for group in params.consensus.groups} | {key for _, _, key in
                                                                       pair_keys(params.consensus.groups)}
    assert set(params.consensus.offsets) <= labels
    assert all(-2.0 <= value <= 2.0 for value in params.consensus.offsets.values())


def test_offsets_shift_a_candidate_and_unknown_ones_are_rejected():
    groups = (("Z-SCORE",), ("MODEL",))
    both = np.array([[2.5, 1.0]])
    assert fuse(both, groups, {}, pairs=False, offsets={"MODEL": 2.0}).tolist() == [3.0]
    document = small_document()
    document["consensus"]["offsets"] = {"NOT A GROUP": 1.0}
    with pytest.raises(InvalidParams, match="consensus.offsets"):
        params_from_dict(document)


def thin_market(n: int, seed: int) -> "pd.DataFrame":
    """The synthetic market in whole steps of 1 %, so most minutes close where the previous one did, with a pump."""
    candles = market(n, seed=seed, symbol="THINBTC")
    step = candles["close"].iloc[0] * 0.01
    for name in ("open", "high", "low", "close"):
        candles[name] = (candles[name] / step).round() * step
    candles.loc[n - 300:n - 290, ["close", "high"]] *= 1.3  # ten minutes 30 % up
    candles.loc[n - 300:n - 290, "volume"] *= 40
    return candles


def test_a_thin_symbol_takes_the_thin_confidence_levels_and_its_share_of_still_closes_carries_over(trained):
    import dataclasses

    _, params = trained
    candles = thin_market(3000, seed=21)
    closes = candles["close"].to_numpy()
    still = np.r_[closes[0] == candles["open"].iloc[0], closes[1:] == closes[:-1]]  # the first against its open
    decisions, state = DetectionEngine(params).process("THINBTC", candles, None)
    assert np.allclose(decisions["still_share"], np.cumsum(still) / np.arange(1, len(closes) + 1))
    assert decisions["still_share"].iloc[-1] >= params.consensus.thin_still_share > 0
    # one call or two with the state in between: the same shares
    first, saved = DetectionEngine(params).process("THINBTC", candles.iloc[:1700], None)
    second, _ = DetectionEngine(params).process("THINBTC", candles.iloc[1700:], saved)
    assert np.array_equal(np.r_[first["still_share"], second["still_share"]], decisions["still_share"])

    def judged(thin_confidence, share):
        consensus = dataclasses.replace(params.consensus, confidence={"LOW": 0.0, "MEDIUM": 0.1, "HIGH": 0.2},
                                        thin_confidence=thin_confidence, thin_still_share=share)
        scored, _ = DetectionEngine(dataclasses.replace(params, consensus=consensus)).process("THINBTC", candles, None)
        return scored.loc[scored["is_anomaly"], "confidence"].tolist()

    liquid_levels = judged({"LOW": 0.0, "MEDIUM": 50.0, "HIGH": 60.0}, 0.0)  # no symbol is thin
    thin_levels = judged({"LOW": 0.0, "MEDIUM": 50.0, "HIGH": 60.0}, params.consensus.thin_still_share)
    assert len(liquid_levels) == len(thin_levels) > 0  # the same anomalies, judged on the other kind's levels
    assert set(liquid_levels) & {"MEDIUM", "HIGH"} and set(thin_levels) == {"LOW"}


def test_train_sets_the_thin_confidence_levels_on_the_thin_series():
    history = {"AAAUSDT": market(6000, seed=11, symbol="AAAUSDT"), "THINBTC": thin_market(6000, seed=22)}
    params = train(history, TrainConfig(base=small_document()))
    assert set(params.trained_on["confidence"]) == {"liquid", "thin"}
    thin = score_series(params, {"THINBTC": history["THINBTC"]})["THINBTC"]
    days = len(thin) / 1440
    for level, days_per_episode in (("MEDIUM", 7.0), ("HIGH", 30.0)):
        start = params.consensus.threshold + params.consensus.thin_confidence[level]
        assert f"fused surprise {round(start, 4)}" in params.trained_on["confidence"]["thin"][level]
        episodes = alarm_episodes(thin["open_time"].to_numpy()[thin["surprise"].to_numpy() >= start])
        assert episodes / days <= 1 / days_per_episode  # at most once a symbol-week / -month on it


def test_train_does_not_count_a_known_real_event_as_a_false_alarm():
    history = {"AAAUSDT": market(6000, seed=11, symbol="AAAUSDT"), "THINBTC": thin_market(6000, seed=22)}
    pump = int(history["THINBTC"]["open_time"].iloc[6000 - 300])
    counted = train(history, TrainConfig(base=small_document()))
    known = train(history, TrainConfig(base=small_document(), known_events=(("THINBTC", pump),)))
    assert "known events of THINBTC" in known.trained_on["threshold"]
    # the pump is the thin series' rarest minute: known, it no longer sets how rare HIGH is there
    assert known.consensus.thin_confidence["HIGH"] < counted.consensus.thin_confidence["HIGH"]
    assert known.consensus.threshold <= counted.consensus.threshold
