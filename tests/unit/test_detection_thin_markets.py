"""Thin markets (price ticks, minutes without a trade), per-symbol self-calibration and confidence by rarity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from market_anomaly.core import DetectionEngine
from market_anomaly.core.calibration import RARITY_LEVELS, self_calibrated
from market_anomaly.core.engine import RARITY_STATE, TICK_STATE, with_tick_size
from market_anomaly.core.features import Segments, candle_features
from market_anomaly.core.state import unpack
from market_anomaly.training.train import TrainConfig, confidence_margins, fused_and_rule, train
from support import market, small_document

TICK = 1e-8


def thin_market(n: int, seed: int, symbol: str = "THINBTC") -> pd.DataFrame:
    """A BTC-quoted pair at about 100 ticks: 85 % of minutes without a trade (last close carried, volume 0),
    the others a trade or two one or two ticks away, of very different sizes."""
    rng = np.random.default_rng(seed)
    traded = rng.random(n) < 0.15
    moves = np.where(traded, rng.choice([-2, -1, 0, 0, 1, 2], n), 0)
    ticks = np.maximum(100 + np.cumsum(moves) - np.cumsum(moves).mean().round(), 50)
    close = ticks * TICK
    open_ = np.concatenate([[close[0]], close[:-1]])
    volume = np.where(traded, rng.lognormal(8, 1.5, n), 0.0)
    return pd.DataFrame({"symbol": symbol, "open_time": 1_600_000_000_000 + np.arange(n) * 60_000, "open": open_,
                         "high": np.maximum(open_, close), "low": np.minimum(open_, close), "close": close,
                         "volume": volume})


@pytest.fixture(scope="module")
def params():
    return train({"TESTUSDT": market(4000, seed=1)}, TrainConfig(base=small_document(), tune_injections=100))


def test_the_tick_is_the_smallest_price_step_and_an_exchange_tick_overrides_it():
    candles = thin_market(400, seed=0)
    features = candle_features(candles, Segments.one(len(candles)), np.array([-1]), np.array([np.nan]),
                               np.array([np.nan]), 60_000, 0.0001)
    assert features.min_step[-1] == pytest.approx(TICK, rel=1e-6)
    seen = features.min_step[np.isfinite(features.min_step)]
    assert len(seen) > 300 and (np.diff(seen) <= 0).all()  # it only ever shrinks to the smallest step
    assert features.tick_return[-1] == pytest.approx(TICK / candles["close"].iloc[-2], rel=1e-6)
    known = candle_features(candles, Segments.one(len(candles)), np.array([-1]), np.array([np.nan]),
                            np.array([np.nan]), 60_000, 0.0001, np.array([np.nan]), np.array([5 * TICK]))
    np.testing.assert_allclose(known.tick_return[1:], 5 * TICK / candles["close"].to_numpy()[:-1], rtol=1e-9)


def test_one_tick_moves_and_single_trades_after_silence_are_ordinary_in_a_thin_market(params):
    decisions, _ = DetectionEngine(params).process("THINBTC", thin_market(3000, seed=1), None)
    warm = decisions.iloc[800:]
    one_tick = warm["return_pct"].abs().between(0.5, 1.1)
    assert one_tick.sum() > 50 and warm.loc[one_tick, "zscore"].abs().max() <= 1.5  # a tick, not hundreds of sigmas
    after_silence = warm["volume"].gt(0) & decisions["volume"].shift().iloc[800:].eq(0)
    assert after_silence.sum() > 50 and warm.loc[after_silence, "volume_ratio"].median() < 3


def test_a_pump_on_a_thin_market_is_still_an_anomaly(params):
    candles = thin_market(3000, seed=2)
    pump = slice(2500, 2509)  # (inclusive: ten candles)
    candles.loc[pump, "close"] = candles["close"].iloc[2499] * np.linspace(1.05, 1.6, 10)
    candles.loc[pump, "open"] = candles["close"].shift().loc[pump]
    candles.loc[pump, "high"] = candles.loc[pump, ["open", "close"]].max(axis=1)
    candles.loc[pump, "low"] = candles.loc[pump, ["open", "close"]].min(axis=1)
    candles.loc[pump, "volume"] = 200 * np.exp(8)
    decisions, _ = DetectionEngine(params).process("THINBTC", candles, None)
    assert decisions["is_anomaly"].iloc[2500:2505].any()


def test_with_tick_size_seeds_a_new_symbol_and_keeps_what_it_learnt(params):
    engine = DetectionEngine(params)
    candles = thin_market(900, seed=3)
    _, state = engine.process("THINBTC", candles.iloc[:600], with_tick_size(None, 2 * TICK))
    assert unpack(state)[TICK_STATE].tolist() == pytest.approx([TICK, 2 * TICK])
    seeded = with_tick_size(state, 3 * TICK)
    assert {name: values.tolist() for name, values in unpack(seeded).items() if name != TICK_STATE} == {
        name: values.tolist() for name, values in unpack(state).items() if name != TICK_STATE}
    with pytest.raises(ValueError):
        with_tick_size(None, 0.0)


def test_self_calibration_raises_the_bar_of_a_symbol_whose_readings_are_often_high_and_survives_chunking():
    rng = np.random.default_rng(0)
    busy = rng.choice([0.0, 5.0], size=(3000, 2), p=[0.9, 0.1])  # reaches 5 (1 in 100,000 typically) daily
    quiet = np.zeros((3000, 2))
    quiet[[1000, 2000]] = 5.0
    surprises = np.vstack([busy, quiet])
    segments = Segments([3000, 3000])
    positions = np.concatenate([np.arange(3000), np.arange(3000)])
    counts = np.zeros((2, 2, len(RARITY_LEVELS)))
    calibrated, whole = self_calibrated(surprises, segments, positions, counts, 2880.0)
    assert calibrated[2000, 0] < 3.0 < 5.0 <= calibrated[3000 + 1000, 0]  # busy: ordinary; quiet: still rare
    assert 3.5 < calibrated[3000 + 2000, 0] < 4.0  # the quiet one's second in 2,000 candles: about that rare
    assert whole[0, 0, 4] == (busy[:, 0] >= 5.0).sum()
    # in pieces, each with the counts the previous one left
    parts, state = [], counts
    for start, end in ((0, 1), (1, 1700), (1700, 3000)):
        piece = np.vstack([busy[start:end], quiet[start:end]])
        calibrated_part, state = self_calibrated(piece, Segments([end - start, end - start]),
                                                 np.concatenate([np.arange(start, end)] * 2), state, 2880.0)
        parts.append((calibrated_part[:end - start], calibrated_part[end - start:]))
    np.testing.assert_array_equal(np.vstack([p[0] for p in parts] + [p[1] for p in parts]), calibrated)
    np.testing.assert_array_equal(state, whole)


def test_a_new_symbol_is_judged_as_the_typical_one():
    surprises = np.array([[2.0, 3.5], [6.0, 4.0]])
    calibrated, _ = self_calibrated(surprises, Segments.one(2), np.arange(2), np.zeros((1, 2, len(RARITY_LEVELS))),
                                    2880.0)
    np.testing.assert_allclose(calibrated, surprises, atol=1e-3)


def test_the_engine_state_carries_the_counts_and_stays_bounded(params):
    engine = DetectionEngine(params)
    _, short = engine.process("THINBTC", thin_market(1000, seed=4), None)
    _, long = engine.process("THINBTC", thin_market(4000, seed=4), None)
    assert len(short) == len(long) < 16_000  # the same layout, whatever the history
    assert unpack(long)[RARITY_STATE].sum() >= unpack(short)[RARITY_STATE].sum() > 0


def test_confidence_levels_are_set_by_rarity_on_the_training_candles(params):
    series = {"A": market(4000, seed=5, symbol="AUSDT"), "B": market(4000, seed=6, symbol="BUSDT")}
    decided = {key: fused_and_rule(key, frame, params) for key, frame in series.items()}
    days = 8000 / 1440
    margins, measured = confidence_margins(decided, params.consensus.threshold, 0.5, 3.0, days)
    assert list(margins) == ["LOW", "MEDIUM", "HIGH"] and 0.0 == margins["LOW"] <= margins["MEDIUM"] <= margins["HIGH"]
    assert "MEDIUM" in measured and "HIGH" in measured
    assert params.trained_on["confidence"]["LOW"].startswith(str(params.consensus.false_alarm_budget))
