"""Detection that holds on every pair: price quantisation, per-symbol self-calibration, confidence by rarity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from market_anomaly.core import DetectionEngine
from market_anomaly.core.features import Segments
from market_anomaly.core.params import SelfCalibrationParams, params_from_dict
from market_anomaly.core.quantisation import price_ticks, relative_tick
from market_anomaly.core.self_calibration import LEVELS, SelfCalibration
from market_anomaly.core.state import BucketState, unpack
from market_anomaly.training.train import alarm_episodes, confidence_margins, train
from support import market, small_document, thin_market

MINUTE = 60_000


@pytest.fixture(scope="module")
def params():
    return train({"TESTUSDT": market(4000, seed=1), "THINBTC": thin_market(4000, seed=2)}, base=small_document(),
                 tune_injections=0)


# -- quantisation ------------------------------------------------------------------------------


def _ticks(candles, last_close=np.nan, last_tick=np.inf):
    return price_ticks(candles, Segments.one(len(candles)), np.array([last_close]), np.array([last_tick]))


def test_the_tick_is_inferred_from_price_steps_and_a_known_tick_size_wins():
    candles = thin_market(300, seed=3)
    ticks, last = _ticks(candles)
    assert ticks[-1] == pytest.approx(1e-8) and last[0] == pytest.approx(1e-8)
    assert np.all(np.diff(ticks[np.isfinite(ticks)]) <= 0)  # the smallest step seen so far
    assert _ticks(candles.iloc[:5], last_tick=3e-9)[0] == pytest.approx(np.full(5, 3e-9))  # from the state
    known = candles.assign(tick_size=1e-9)
    assert _ticks(known)[0] == pytest.approx(np.full(300, 1e-9))
    assert _ticks(known)[1][0] == pytest.approx(1e-8)  # the state keeps inferring
    assert relative_tick(np.array([np.inf, 1e-8]), np.array([1.0, 1e-6])).tolist() == [0.0, pytest.approx(0.01)]


def test_several_symbols_in_one_call_infer_their_own_ticks():
    thin, liquid = thin_market(200, seed=4), market(200, seed=5)
    both = pd.concat([thin, liquid], ignore_index=True)
    ticks, last = price_ticks(both, Segments([200, 0, 200]), np.array([np.nan, np.nan, np.nan]),
                              np.array([np.inf, 5e-3, np.inf]))
    assert ticks[:200] == pytest.approx(_ticks(thin)[0]) and ticks[200:] == pytest.approx(_ticks(liquid)[0])
    assert last.tolist() == [pytest.approx(1e-8), 5e-3, pytest.approx(_ticks(liquid)[1][0])]  # absent: kept


def test_one_tick_moves_and_single_trades_after_silence_are_ordinary_on_a_thin_market(params):
    decisions, state = DetectionEngine(params).process("THINBTC", thin_market(3000, seed=4), None)
    warm = decisions.iloc[1000:]
    one_tick = warm[(warm["close"].diff().abs() > 0) & (warm["close"].diff().abs() < 1.5e-8)]
    assert len(one_tick) > 100 and one_tick["zscore"].abs().max() <= 1.01  # a tick is at most one sigma
    traded = warm[warm["volume"] > 0]
    assert traded["volume_ratio"].median() == pytest.approx(1.0, rel=0.3)  # vs the usual trade-minute
    per_day = alarm_episodes(warm["open_time"].to_numpy()[warm["is_anomaly"].to_numpy()]) / (len(warm) / 1440)
    assert per_day <= 2 * params.consensus.false_alarm_budget  # without quantisation: dozens a day
    assert unpack(state)["quantisation.tick"][0] == pytest.approx(1e-8)


def test_a_pump_on_a_thin_market_is_still_an_anomaly(params):
    candles = thin_market(3000, seed=5)
    close = candles["close"].to_numpy().copy()
    close[2500:2510] = np.round(close[2499] * np.linspace(1.05, 1.6, 10), 8)  # +5 % to +60 % in whole ticks
    close[2510:] = close[2499]  # and dumped
    previous = np.concatenate([[close[0]], close[:-1]])
    candles = candles.assign(close=close, open=previous, high=np.maximum(previous, close),
                             low=np.minimum(previous, close))
    candles.loc[2500:2510, "volume"] = 200_000.0
    decisions, _ = DetectionEngine(params).process("THINBTC", candles, None)
    assert decisions["is_anomaly"].iloc[2500:2505].any()
    assert decisions["confidence"].iloc[2500:2510].isin(["MEDIUM", "HIGH"]).any()


# -- self-calibration --------------------------------------------------------------------------


def _calibration(prior: int = 100, refresh: int = 10, symbols: int = 1) -> SelfCalibration:
    nominal = 10.0 ** -LEVELS - 10.0 ** -(LEVELS + 0.25)  # calibrated pooled surprises: P(S >= s) = 10**-s
    return SelfCalibration(SelfCalibrationParams(prior_candles=prior, refresh=refresh, half_life_days=14.0,
                                                 min_shift=-1.5, max_shift=6.0, warmup=0,
                                                 pooled=(tuple(nominal / nominal.sum()),) * 2), symbols)


def test_a_symbol_is_measured_against_its_own_history_and_chunking_cannot_change_it():
    rng = np.random.default_rng(1)
    # group 0 scores 1.5 above the pooled scale on every minute (a busy pair), group 1 as pooled
    own = np.column_stack([rng.exponential(1 / np.log(10), 6000) + 1.5, rng.exponential(1 / np.log(10), 6000)])
    whole = _calibration()
    calibrated = whole.calibrated(own, np.arange(6000), Segments.one(6000))
    assert np.array_equal(calibrated[:10], own[:10])  # no history yet: the prior, i.e. the pooled scale
    late = calibrated[3000:]
    assert np.mean(late[:, 0] >= 2.0) == pytest.approx(0.01, abs=0.005)  # its own rarity, not the pooled one
    assert np.mean(own[3000:, 0] >= 2.0) > 0.3
    assert np.mean(late[:, 1] >= 2.0) == pytest.approx(0.01, abs=0.005)
    assert (late[:, 0] >= own[3000:, 0] - 6.0).all() and (late[:, 0] <= own[3000:, 0] + 1.5).all()  # bounded
    state, parts = None, []
    for start, stop in [(0, 7), (7, 8), (8, 1234), (1234, 6000)]:
        chunked = _calibration()
        if state is not None:
            chunked.restore(BucketState([{f"selfcal.{name}": values[0] for name, values in state.items()}])
                            .within("selfcal"))
        parts.append(chunked.calibrated(own[start:stop], np.arange(start, stop), Segments.one(stop - start)))
        state = chunked.state()
    assert np.array_equal(np.concatenate(parts), calibrated)
    assert all(np.array_equal(state[name], whole.state()[name]) for name in state)
    # with other symbols in the same call (one without candles): the same surprises
    together = _calibration(symbols=3).calibrated(np.concatenate([own, np.zeros((500, 2))]), np.concatenate(
        [np.arange(6000), np.arange(500)]), Segments([6000, 0, 500]))
    assert np.array_equal(together[:6000], calibrated)


def test_without_a_pooled_histogram_nothing_changes():
    calibration = SelfCalibration(params_from_dict(small_document()).self_calibration, 1)
    surprise = np.ones((5, 6))
    assert calibration.calibrated(surprise, np.arange(5), Segments.one(5)) is surprise
    assert calibration.state() == {}
    assert len(LEVELS) == 48


def test_one_set_of_parameters_holds_the_budget_on_a_liquid_and_a_thin_market(params):
    engine = DetectionEngine(params)
    for symbol, candles in (("TESTUSDT", market(6000, seed=11)), ("THINBTC", thin_market(6000, seed=12))):
        decisions = engine.process(symbol, candles, None)[0].iloc[1000:]
        episodes = alarm_episodes(decisions["open_time"].to_numpy()[decisions["is_anomaly"].to_numpy()])
        assert episodes / (len(decisions) / 1440) <= 3 * params.consensus.false_alarm_budget, symbol


# -- confidence by rarity ----------------------------------------------------------------------


def test_confidence_levels_are_the_surprise_of_rarer_episode_rates():
    days = 30.0
    rng = np.random.default_rng(2)
    times = {"A": np.sort(rng.choice(int(days * 1440), 3000, replace=False)) * MINUTE}
    fused = {"A": rng.exponential(1.0, 3000) + 3.0}
    threshold = 4.0
    margins = confidence_margins(fused, times, threshold, days)
    assert list(margins) == ["LOW", "MEDIUM", "HIGH"] and margins["LOW"] == 0.0
    assert 0 < margins["MEDIUM"] < margins["HIGH"]
    for level, rate in (("MEDIUM", 1 / 7), ("HIGH", 1 / 30)):
        flagged = times["A"][fused["A"] >= threshold + margins[level]]
        assert alarm_episodes(flagged) / days <= rate


def test_committed_params_say_what_confidence_means(params):
    assert set(params.consensus.confidence) == {"LOW", "MEDIUM", "HIGH"}
