"""Thin markets (price ticks, minutes without a trade) and per-symbol self-calibration of each detector's surprise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from market_anomaly.core import DetectionEngine
from market_anomaly.core.calibration import OWN_LEVELS, own_surprise
from market_anomaly.core.engine import OWN_STATE
from market_anomaly.core.features import Segments, candle_features
from market_anomaly.core.state import unpack
from market_anomaly.training.train import TrainConfig, ordered_series, train
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
    return train({"TESTUSDT": market(4000, seed=1), "THINBTC": thin_market(4000, seed=0)},
                 TrainConfig(base=small_document(), tune_injections=100))


def test_the_tick_is_the_smallest_price_step_seen():
    candles = thin_market(400, seed=0)
    features = candle_features(candles, Segments.one(len(candles)), np.array([-1]), np.array([np.nan]),
                               np.array([np.nan]), 60_000, 0.0001)
    assert features.min_step[-1] == pytest.approx(TICK, rel=1e-6)
    seen = features.min_step[np.isfinite(features.min_step)]
    assert len(seen) > 300 and (np.diff(seen) <= 0).all()  # it only ever shrinks to the smallest step
    assert features.tick_return[-1] == pytest.approx(TICK / candles["close"].iloc[-2], rel=1e-6)


def test_the_exchanges_tick_size_is_the_tick_from_the_first_candle_and_a_smaller_step_still_wins():
    candles = thin_market(400, seed=0)
    inferred = candle_features(candles, Segments.one(len(candles)), np.array([-1]), np.array([np.nan]),
                               np.array([np.nan]), 60_000, 0.0001).min_step
    assert np.isnan(inferred[0]) or inferred[0] > TICK  # inferred, the tick is unknown or too large at first
    known = candles.assign(tick_size=np.where(np.arange(len(candles)) < 300, TICK, np.nan))
    known.loc[350, "tick_size"] = 2 * TICK  # a larger tick later does not undo the smaller one
    features = candle_features(known, Segments.one(len(known)), np.array([-1]), np.array([np.nan]),
                               np.array([np.nan]), 60_000, 0.0001)
    np.testing.assert_allclose(features.min_step, TICK)
    assert features.tick_return[0] == pytest.approx(TICK / candles["open"].iloc[0])
    finer = candles.assign(tick_size=TICK, close=candles["close"] + np.where(np.arange(400) == 200, TICK / 2, 0.0))
    finer["high"] = finer[["high", "close"]].max(axis=1)  # the exchange lowered its tick: the half step is real
    steps = candle_features(finer, Segments.one(400), np.array([-1]), np.array([np.nan]), np.array([np.nan]),
                            60_000, 0.0001).min_step
    assert steps[199] == pytest.approx(TICK) and steps[-1] == pytest.approx(TICK / 2)


def test_a_known_tick_size_reaches_the_state_and_decisions_survive_chunking(params):
    engine = DetectionEngine(params)
    candles = thin_market(1200, seed=5).assign(tick_size=TICK)
    whole, whole_state = engine.process("THINBTC", candles, None)
    _, first = engine.process("THINBTC", candles.iloc[:1], None)
    assert unpack(first)["engine.tick"] == pytest.approx([TICK])
    assert "tick_size" in ordered_series(candles)  # training and evaluation see it too
    state, parts = None, []
    for start in range(0, len(candles), 97):
        decisions, state = engine.process("THINBTC", candles.iloc[start:start + 97], state)
        parts.append(decisions)
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
    assert state == whole_state


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


def test_own_calibration_lowers_a_busy_symbols_readings_raises_a_quiet_ones_and_survives_chunking():
    rng = np.random.default_rng(0)
    busy = rng.choice([0.2, 2.0, 4.0], size=3000, p=[0.7, 0.25, 0.05])  # pooled level 2 a quarter of the time
    quiet = rng.choice([0.2, 1.0], size=3000, p=[0.95, 0.05])           # never reaches pooled level 1.5
    quiet[2000] = 4.0
    pooled = np.concatenate([busy, quiet])[:, None]
    segments, counted = Segments([3000, 3000]), np.ones((6000, 1), dtype=bool)
    history = np.zeros((2, 1, 1 + len(OWN_LEVELS)))
    own, whole = own_surprise(pooled, counted, segments.ids, segments.starts, history, 1440.0)
    own, whole = own[:, 0], whole[:, 0]
    assert own[0] == pytest.approx(pooled[0]) and own[3000] == pytest.approx(pooled[3000])  # new: the pooled view
    busy_late, quiet_late = own[2500:3000][busy[2500:] == 4.0], own[3000 + 2000]
    assert busy_late.max() < 3.0 < 4.0 < quiet_late  # the busy symbol's 4 is ordinary for it, the quiet one's rare
    assert whole[0, 0] == 3000 and whole[0, -1] == (busy >= OWN_LEVELS[-1]).sum()
    parts, state = [], history  # in pieces, each with the counts the previous one left
    for start, end in ((0, 1), (1, 1700), (1700, 3000)):
        piece = np.concatenate([busy[start:end], quiet[start:end]])[:, None]
        size = end - start
        part_segments = Segments([size, size])
        part, state = own_surprise(piece, np.ones((2 * size, 1), dtype=bool), part_segments.ids,
                                   part_segments.starts, state, 1440.0)
        parts.append((part[:size, 0], part[size:, 0]))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts] + [p[1] for p in parts]), own)
    np.testing.assert_array_equal(state[:, 0], whole)


def reference_counts(pooled, counted, history, memory):
    """One symbol's counts candle by candle, halved when the total reaches twice ``memory``: the plain rule."""
    state, before = history.copy(), []
    while (over := state[:, :1] >= 2 * memory).any():  # a state kept without forgetting: halved to below
        state = np.where(over, np.floor(state / 2), state)
    for surprise_row, counted_row in zip(pooled, counted):
        before.append(state.copy())
        increments = np.column_stack([counted_row, (surprise_row[:, None] >= OWN_LEVELS[None, :]) & counted_row[:, None]])
        state = state + increments
        halve = state[:, 0] >= 2 * memory
        state[halve] = np.floor(state[halve] / 2)
    return np.array(before), state


def test_forgetting_halves_the_counts_at_fixed_totals_whatever_the_cut():
    rng = np.random.default_rng(5)
    lengths, memory = [700, 1, 0, 450], 60
    pooled = rng.choice([0.2, 0.7, 1.2, 1.7, 2.5], size=(sum(lengths), 2))
    counted = rng.random((sum(lengths), 2)) < 0.8
    history = np.zeros((4, 2, 1 + len(OWN_LEVELS)))
    history[0, :, 0], history[0, :, 1] = 100, 40  # a symbol that has counted before: 20 from its first halving
    history[3, :, 0], history[3, :, 4] = 50_000, 999  # one counted without forgetting, far beyond the memory
    segments = Segments(lengths)
    own, whole = own_surprise(pooled, counted, segments.ids, segments.starts, history, 50.0, memory)
    for symbol, (begin, end) in enumerate(zip(segments.starts, segments.ends)):
        _, expected = reference_counts(pooled[begin:end], counted[begin:end], history[symbol], memory)
        np.testing.assert_array_equal(whole[symbol], expected)
    assert (whole[:, :, 0] < 2 * memory).all() and whole[0, 0, 0] >= memory  # between one and two memories
    rows = np.arange(sum(lengths))
    for cuts in ([1, 5, 333, 334, 900], [61, 62, 63, 700, 1000], list(range(7, 1151, 97))):
        state, parts = history, []
        for begin, end in zip([0] + cuts, cuts + [len(rows)]):  # the same candles, cut into calls
            piece = rows[begin:end]
            symbols = segments.ids[piece]
            part_segments = Segments(np.bincount(symbols, minlength=4))
            part, state = own_surprise(pooled[piece], counted[piece], part_segments.ids, part_segments.starts,
                                       state, 50.0, memory)
            parts.append(part)
        np.testing.assert_array_equal(np.concatenate(parts), own)
        np.testing.assert_array_equal(state, whole)


def test_a_symbol_that_forgets_follows_a_change_of_regime():
    busy_then_quiet = np.concatenate([np.full(6000, 2.5), np.full(3000, 0.2)])
    busy_then_quiet[-1] = 2.5  # a busy minute again, after two days of quiet
    pooled, counted = busy_then_quiet[:, None], np.ones((9000, 1), dtype=bool)
    segments, history = Segments.one(9000), np.zeros((1, 1, 1 + len(OWN_LEVELS)))
    keeping, _ = own_surprise(pooled, counted, segments.ids, segments.starts, history, 1440.0)
    forgetting, _ = own_surprise(pooled, counted, segments.ids, segments.starts, history, 1440.0, 1000)
    assert keeping[-1, 0] < 1.0 < 1.5 < forgetting[-1, 0]  # still ordinary for one; rarer again for the other


def test_uncounted_candles_do_not_move_the_counts():
    pooled = np.array([[2.0], [2.0], [2.0]])
    own, counts = own_surprise(pooled, np.zeros((3, 1), dtype=bool), np.zeros(3, dtype=np.int64), np.array([0]),
                               np.zeros((1, 1, 1 + len(OWN_LEVELS))), 100.0)
    np.testing.assert_allclose(own, pooled)
    assert counts.sum() == 0


def test_the_engine_state_carries_the_counts_and_stays_bounded(params):
    engine = DetectionEngine(params)
    _, short = engine.process("THINBTC", thin_market(1000, seed=4), None)
    _, long = engine.process("THINBTC", thin_market(4000, seed=4), None)
    assert len(short) == len(long) < 16_000  # the same layout, whatever the history
    assert unpack(long)[OWN_STATE].sum() >= unpack(short)[OWN_STATE].sum() > 0
