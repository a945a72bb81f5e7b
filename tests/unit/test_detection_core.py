"""The detection core: features, detectors, consensus, engine state, chunk invariance, parameters."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
import pandas as pd
import pytest

from market_anomaly.core import (DECISION_SCHEMA, DetectionEngine, InvalidParams, ParamsWatcher, load_params,
                                 mark_market_events)
from market_anomaly.core.consensus import MarketTally, consensus
from market_anomaly.core.baselines import Baselines, Context
from market_anomaly.core.detectors import ReturnZScore, Volatility, VolumeSpike
from market_anomaly.core.features import CandleFeatures, RollingStats, Segments, candle_features, median_iqr, median_only
from market_anomaly.core.params import DEFAULTS, params_from_dict, params_with
from market_anomaly.core.engine import OWN_STATE
from market_anomaly.core.state import unpack
from market_anomaly.exchange.market import MINUTE_MS as MINUTE, SYNTHETIC_START as START, synthetic_candles
from market_anomaly.training.train import TrainConfig, train, write_params
from support import market, small_document


@pytest.fixture(scope="module")
def params():
    return train({"TESTUSDT": market(4000, seed=1)}, TrainConfig(base=small_document()))


@pytest.fixture(scope="module")
def engine(params):
    return DetectionEngine(params)


# -- features -----------------------------------------------------------------------------------


def test_candle_features_on_a_hand_computed_example():
    candles = pd.DataFrame({"open_time": [0, MINUTE, 3 * MINUTE], "open": [100.0, 101.0, 99.0],
                            "high": [101.0, 102.0, 99.5], "low": [99.0, 100.5, 98.0], "close": [101.0, 102.0, 99.0],
                            "volume": [2.0, 4.0, 1.0], "taker_buy_base": [1.0, 3.0, 0.5]})
    features = candle_features(candles, Segments.one(3), last_open_time=np.array([-MINUTE]),
                               last_close=np.array([100.0]), last_volume=np.array([4.0]), interval_ms=MINUTE,
                               range_floor_pct=1e-4)
    # close-to-close for consecutive minutes; after the 2-minute gap, the candle's own open-to-close
    np.testing.assert_allclose(features.log_return, [np.log(1.01), np.log(102 / 101), np.log(99 / 99)])
    np.testing.assert_allclose(features.return_pct, [1.0, 100 * (102 / 101 - 1), 0.0])
    np.testing.assert_allclose(features.range_pct, [2.0, 1.5 / 101 * 100, 1.5 / 99 * 100])
    np.testing.assert_allclose(features.volume_change, [-0.5, 1.0, np.nan])
    np.testing.assert_allclose(features.taker_buy_share, [0.5, 0.75, 0.5])


def test_rolling_stats_use_only_values_before_the_refresh_point_and_survive_chunking():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0, 6.0, 7.0, 8.0])
    whole = RollingStats(window=4, refresh=2, statistic=median_iqr)
    center, scale = whole.baselines(values, Segments.one(len(values)))
    # value 5 (position 4) and 6 use positions 0-3 = [1, 2, 3, 4]: median 2.5, quartiles 2 and 4
    assert np.isnan(center[:4]).all()
    assert center[4] == center[5] == 2.5 and scale[4] == pytest.approx(2 / 1.349)
    # positions 6 and 7 use positions 2-5 = [3, 4, 100, 6]: median 5, quartiles 4 and 100
    assert center[6] == 5.0 and scale[6] == pytest.approx(96 / 1.349)
    chunked = RollingStats(window=4, refresh=2, statistic=median_iqr)
    parts = []
    for piece in (values[:3], values[3:4], values[4:]):
        parts.append(chunked.baselines(piece, Segments.one(len(piece)))[0])
        chunked.learn(piece, Segments.one(len(piece)))
    np.testing.assert_array_equal(np.concatenate(parts), center)


@pytest.mark.parametrize("statistic", [median_iqr, median_only])
def test_a_window_holding_a_missing_value_has_no_statistic(statistic):
    # Partitioning sorts NaN as the largest value but leaves everything past the upper quartile unordered,
    # so the NaN need not land in the last column (it did not, for this window, before the fix).
    windows = np.array([[9.0, 12.0, 5.0, np.nan, 6.0, 1.0, 2.0, 10.0, 3.0, 11.0, 7.0, 4.0],
                        [9.0, 12.0, 5.0, 8.0, 6.0, 1.0, 2.0, 10.0, 3.0, 11.0, 7.0, 4.0]])
    center, _ = statistic(windows)
    assert np.isnan(center[0]) and center[1] == 6.5


# -- detectors on synthetic series ---------------------------------------------------------------


def features(**arrays: np.ndarray) -> CandleFeatures:
    """Candle features with the given arrays, the others neutral (volume 1, return 0, log range 0)."""
    length = len(next(iter(arrays.values())))
    neutral = {"log_return": np.zeros(length), "return_pct": np.zeros(length), "volume": np.ones(length),
               "log_range": np.zeros(length)}
    return CandleFeatures.of(**{**neutral, **arrays})


def scored(detector, baselines: Baselines, candles: CandleFeatures, start: int) -> tuple[np.ndarray, Context]:
    """One engine step for one symbol: the context of ``candles`` (positions from ``start``), the detector's
    scores, then both learn them."""
    count = len(candles.log_return)
    context = baselines.context(candles, start + np.arange(count), Segments.one(count))
    scores = detector.score(context)
    baselines.learn(context)
    detector.learn(context)
    return scores, context


def test_return_zscore_flags_a_jump_and_adapts_to_a_busier_market():
    params = params_with()
    rng = np.random.default_rng(0)
    detector, baselines = ReturnZScore(params), Baselines(params)
    scored(detector, baselines, features(log_return=rng.normal(0, 0.001, 300)), 0)
    jump = scored(detector, baselines, features(log_return=np.array([0.012])), 300)[0][0]
    assert 10 < jump < 14  # 12 sigmas of the calm market
    assert detector.votes(np.array([jump]), np.array([300])).tolist() == [True]
    assert detector.votes(np.array([jump]), np.array([10])).tolist() == [False]  # still warming up
    scored(detector, baselines, features(log_return=rng.normal(0, 0.004, 30)), 301)  # four times busier
    assert abs(scored(detector, baselines, features(log_return=np.array([0.012])), 331)[0][0]) < 5


def test_volatility_votes_when_the_hour_is_far_more_volatile_than_its_history():
    params = params_from_dict(small_document())
    rng = np.random.default_rng(1)
    detector, baselines = Volatility(params), Baselines(params)
    scored(detector, baselines, features(return_pct=rng.normal(0, 0.05, 2000)), 0)
    z, context = scored(detector, baselines, features(return_pct=rng.normal(0, 0.5, 30)), 2000)
    assert context.window_std[-1] > 0.2 and z[-1] > params.volatility.threshold
    assert detector.votes(z, 2000 + np.arange(30))[-1]
    calm_again = Volatility(params), Baselines(params)
    scored(*calm_again, features(return_pct=rng.normal(0, 0.05, 2000)), 0)
    assert abs(scored(*calm_again, features(return_pct=rng.normal(0, 0.05, 1)), 2000)[0][0]) < 3


def test_volume_spike_is_a_multiple_of_the_rolling_median():
    params = params_with()
    detector, baselines = VolumeSpike(params), Baselines(params)
    scored(detector, baselines, features(volume=np.full(100, 5.0)), 0)
    ratios = scored(detector, baselines, features(volume=np.array([5.0, 70.0])), 100)[0]
    np.testing.assert_allclose(ratios, [1.0, 14.0])
    assert detector.votes(ratios, np.array([100, 101])).tolist() == [False, True]
    assert detector.reason(ratios[1]) == "VOLUME 14x"


# -- engine ------------------------------------------------------------------------------------------


def test_decisions_follow_the_schema_and_flag_an_injected_crash(engine):
    candles = market(2000, seed=3)
    candles.loc[1500:, ["open", "high", "low", "close"]] *= 0.95  # a 5 % gap down at minute 1500
    candles.loc[1500, "open"] = candles.loc[1499, "close"]
    candles.loc[1500, "high"] = candles.loc[1500, "open"]
    candles.loc[1500, "volume"] *= 20
    decisions, state = engine.process("TESTUSDT", candles, None)
    assert list(decisions.columns) == [name for name, _ in DECISION_SCHEMA]
    assert [str(t) for t in decisions.dtypes] == [dtype for _, dtype in DECISION_SCHEMA]
    assert len(decisions) == 2000 and decisions["open_time"].is_monotonic_increasing
    crash = decisions.iloc[1500]
    assert crash["is_anomaly"] and crash["confidence"] in ("LOW", "MEDIUM", "HIGH")
    assert "Z-SCORE" in crash["reasons"] and "σ" in crash["reasons"]
    assert crash["produced_at"] == candles["produced_at"][1500]
    for column in ("votes", "is_anomaly", "market_event", "produced_at", "open_time", "close_time"):
        assert decisions[column].notna().all()
    assert not decisions["is_anomaly"].iloc[:240].any()  # warm-up: detectors do not vote yet
    assert decisions["is_anomaly"].mean() < 0.01
    assert len(state) < 16_000


def test_chunk_invariance_for_random_chunkings(engine):
    candles = market(1800, seed=4)
    candles.loc[1200, "close"] *= 1.02  # something to flag
    whole, whole_state = engine.process("TESTUSDT", candles, None)
    assert whole["votes"].sum() > 0
    rng = np.random.default_rng(0)
    for _ in range(4):
        cuts = np.sort(rng.choice(np.arange(1, len(candles)), size=rng.integers(1, 40), replace=False)).tolist()
        state, parts = None, []
        for start, end in zip([0] + cuts, cuts + [len(candles)]):
            decisions, state = engine.process("TESTUSDT", candles.iloc[start:end], state)
            parts.append(decisions)
        pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
        assert state == whole_state


def test_a_short_memory_forgets_in_the_engine_and_still_survives_chunking(params):
    forgetful = DetectionEngine(dataclasses.replace(params, consensus=dataclasses.replace(
        params.consensus, own_memory_candles=200)))
    candles = market(1800, seed=4)
    whole, whole_state = forgetful.process("TESTUSDT", candles, None)
    remembering, _ = DetectionEngine(params).process("TESTUSDT", candles, None)
    assert not np.allclose(whole["surprise"], remembering["surprise"])  # it forgot something
    assert (unpack(whole_state)[OWN_STATE].reshape(-1, 5)[:, 0] < 400).all()  # each detector's counts < 2 memories
    state, parts = None, []
    for start, end in ((0, 1), (1, 399), (399, 1100), (1100, 1800)):
        decisions, state = forgetful.process("TESTUSDT", candles.iloc[start:end], state)
        parts.append(decisions)
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
    assert state == whole_state


def test_one_candle_per_call_matches_one_call(engine):
    candles = market(700, seed=5)
    whole, _ = engine.process("TESTUSDT", candles, None)
    state, head = engine.process("TESTUSDT", candles.iloc[:600], None)[1], whole.iloc[:600]
    rows = [head]
    for i in range(600, 700):
        decisions, state = engine.process("TESTUSDT", candles.iloc[i:i + 1], state)
        rows.append(decisions)
    pd.testing.assert_frame_equal(pd.concat(rows, ignore_index=True), whole)


def test_a_bucket_decided_in_one_pass_equals_each_symbol_decided_alone(engine):
    """The stream decides a state bucket (many symbols, a few candles each) in one call; offline decides one
    symbol per call. Same decisions and states, whatever the mix: new symbols, symbols without candles,
    interleaved rows, replays and duplicates."""
    markets = {f"S{seed}USDT": market(900, seed=seed, symbol=f"S{seed}USDT") for seed in range(6)}
    for candles in markets.values():
        candles.loc[700, "close"] *= 1.03  # something to flag
    rng = np.random.default_rng(3)
    bucket_states, alone_states = {}, {}
    done = dict.fromkeys(markets, 0)
    while min(done.values()) < 900:
        batch = []
        for symbol, candles in markets.items():
            if done[symbol] < 900 and rng.random() < 0.7:
                end = min(900, done[symbol] + int(rng.choice([1, 1, 2, 5, 300])))
                batch.append(candles.iloc[max(0, done[symbol] - 2):end])  # with a replay of known candles
                done[symbol] = end
        if not batch:
            continue
        batch = pd.concat(batch + [batch[0].iloc[-1:].assign(close=1.0)])  # a duplicate with other prices
        batch = batch.sample(frac=1.0, random_state=int(rng.integers(1000)))  # interleaved
        decided = engine.decide_bucket(batch, bucket_states)
        bucket_states.update(decided.states)
        frame = decided.frame()
        for symbol, rows in batch.groupby("symbol", sort=False):
            alone, alone_states[symbol] = engine.process(symbol, rows, alone_states.get(symbol))
            pd.testing.assert_frame_equal(frame[frame["symbol"] == symbol].reset_index(drop=True), alone,
                                          check_exact=True)
            first_of_each = rows.drop_duplicates("open_time").set_index("open_time")["close"]
            np.testing.assert_array_equal(
                batch["close"].to_numpy()[decided.rows[frame["symbol"] == symbol]],
                first_of_each.loc[alone["open_time"]].to_numpy())  # rows point at the decided candles
        assert bucket_states == alone_states
    assert (engine.decide_bucket(markets["S0USDT"].iloc[:5], bucket_states).frame().empty
            and list(engine.decide_bucket(markets["S0USDT"].iloc[:0], {}).frame().columns)
            == [name for name, _ in DECISION_SCHEMA])
    with pytest.raises(ValueError, match="1 candles without a symbol"):  # never decided as some other symbol's
        engine.decide_bucket(markets["S0USDT"].iloc[:3].assign(symbol=["S0USDT", None, "S0USDT"]), {})


def test_duplicates_replays_and_disorder_are_dropped(engine):
    candles = market(600, seed=6)
    expected, _ = engine.process("TESTUSDT", candles, None)
    first, state = engine.process("TESTUSDT", candles.iloc[:400], None)
    # a replay of 300-399 plus new candles, shuffled, with duplicates of new ones
    replay = pd.concat([candles.iloc[300:600], candles.iloc[450:460]]).sample(frac=1.0, random_state=1)
    second, state = engine.process("TESTUSDT", replay, state)
    assert second["open_time"].tolist() == candles["open_time"].iloc[400:600].tolist()
    pd.testing.assert_frame_equal(pd.concat([first, second], ignore_index=True), expected)
    again, same_state = engine.process("TESTUSDT", candles.iloc[100:600], state)
    assert again.empty and list(again.columns) == [name for name, _ in DECISION_SCHEMA] and same_state == state


def test_a_gap_is_not_one_huge_return(engine):
    candles = market(800, seed=7).drop(index=range(500, 560)).reset_index(drop=True)
    # the price moved 3 % while no candles came
    candles.loc[500:, ["open", "high", "low", "close"]] *= 1.03
    decisions, _ = engine.process("TESTUSDT", candles, None)
    after_gap = decisions.iloc[500]
    assert after_gap["log_return"] == pytest.approx(np.log(candles["close"][500] / candles["open"][500]))
    assert abs(after_gap["zscore"]) < 6 and not after_gap["is_anomaly"]
    assert np.isnan(after_gap["volume_change"])


def test_missing_optional_columns_are_filled(engine):
    candles = market(300, seed=8)[["open_time", "open", "high", "low", "close", "volume"]]
    decisions, _ = engine.process("ABC", candles, None)
    assert (decisions["interval"] == "1m").all() and (decisions["produced_at"] == 0).all()
    assert (decisions["close_time"] == decisions["open_time"] + MINUTE - 1).all()
    assert decisions["taker_buy_share"].isna().all()


def test_state_is_compact_and_plain(engine):
    _, state = engine.process("TESTUSDT", market(3000, seed=9), None)
    arrays = unpack(state)
    assert len(state) < 16_000
    assert arrays["engine.last"][0] == START + 2999 * MINUTE and arrays["engine.last"][3] == 3000


# -- consensus and market-wide events -----------------------------------------------------------


def test_consensus_rule_path_and_calibrated_fused_path():
    rule = {"required": ["Z-SCORE", "MODEL"], "alone": {"MODEL": 0.9, "Z-SCORE": 14.0}}
    params = params_from_dict({**DEFAULTS, "consensus": {
        **DEFAULTS["consensus"], **rule, "groups": [["Z-SCORE"], ["VOLUME"], ["MODEL"]], "pairs": False,
        "threshold": 5.0}}).consensus
    # rule: Z-SCORE + MODEL together, or MODEL >= 0.9, or |Z-SCORE| >= 14; fused: the largest group surprise >= 5
    names = ("Z-SCORE", "VOLATILITY", "VOLUME", "MODEL")
    rows = {  # name -> (eligible per row, score per row, surprise per row)
        "Z-SCORE": ([1, 1, 0, 1, 1, 0, 0], [7.0, 8.0, 1.0, -15.0, 9.0, 0.5, 0.1], [2.0, 2.5, 0, 3.5, 3.0, 0, 0]),
        "VOLATILITY": ([0, 0, 0, 0, 1, 0, 0], [0.0, 0.0, 0.0, 0.0, 3.5, 0.0, 0.0], [0, 0, 0, 0, 4.0, 0, 0]),
        "VOLUME": ([0, 1, 1, 0, 1, 0, 1], [1.0, 20.0, 30.0, 1.0, 12.0, 1.0, 60.0], [0, 2.9, 3.1, 0, 2.5, 0, 6.5]),
        "MODEL": ([1, 0, 1, 0, 1, 1, 0], [0.6, 0.1, 0.7, 0.2, 1.5, 0.95, 0.0], [2.6, 0, 2.8, 0, 4.0, 3.5, 0]),
    }
    eligible = {name: np.array(rows[name][0], dtype=bool) for name in names}
    scores = {name: np.array(rows[name][1]) for name in names}
    surprises = {name: np.array(rows[name][2], dtype=float) for name in names}
    reasons = {name: (lambda s, name=name: f"{name} {abs(s):.1f}") for name in names}
    count, anomaly, confidence, why, fused = consensus(eligible, reasons, scores, surprises, params)
    # move + model (rule) | big move on big volume is no news | volume + model without the move | extreme move
    # alone | everything | the model alone beyond its own level | 60x volume: calibrated surprise 6.5 alone
    assert anomaly.tolist() == [True, False, False, True, True, True, True]
    assert fused.tolist() == [2.6, 2.9, 3.1, 3.5, 4.0, 3.5, 6.5]  # VOLATILITY is not in the fused groups
    assert confidence.tolist() == ["LOW", "NONE", "NONE", "LOW", "LOW", "LOW", "MEDIUM"]
    assert count.tolist() == [2, 0, 1, 1, 4, 1, 1]
    assert why[4] == "Z-SCORE 9.0 | VOLATILITY 3.5 | VOLUME 12.0 | MODEL 1.5" and why[6] == "VOLUME 60.0"


def decision_rows(anomalous: dict[str, list[bool]]) -> pd.DataFrame:
    rows = []
    for symbol, flags in anomalous.items():
        for minute, flag in enumerate(flags):
            rows.append({"symbol": symbol, "open_time": minute * MINUTE, "is_anomaly": flag,
                         "reasons": "Z-SCORE 9.0σ" if flag else "", "market_event": False})
    return pd.DataFrame(rows)


def test_market_event_needs_enough_symbols_in_the_same_minute(params):
    decisions = decision_rows({f"S{i}": [i < 4, i < 2] for i in range(10)})
    marked = mark_market_events(decisions, params)
    minute0 = marked[marked["open_time"] == 0]
    assert minute0["market_event"].sum() == 4  # 4 of 10 >= max(3, 30 %)
    assert minute0[minute0["market_event"]]["reasons"].eq("Z-SCORE 9.0σ | MARKET 4/10").all()
    assert not marked[marked["open_time"] == MINUTE]["market_event"].any()  # 2 of 10 is not a market event
    assert not decisions["market_event"].any()  # the input is not modified


def last_per_key(frames) -> pd.DataFrame:
    """The last decision given for each (symbol, open_time), in key order: what an upserting sink keeps."""
    given = pd.concat([frame for frame in frames if not frame.empty], ignore_index=True)
    return (given.drop_duplicates(["symbol", "open_time"], keep="last").sort_values(["open_time", "symbol"])
            .reset_index(drop=True)[["symbol", "open_time", "is_anomaly", "market_event", "reasons"]])


@pytest.mark.parametrize("seed", range(5))
def test_a_tally_over_batches_ends_with_the_whole_files_marks(params, seed):
    rng = np.random.default_rng(seed)
    # 20 symbols, 6 minutes: market-wide minutes (most symbols anomalous), near misses and quiet ones.
    shares = [0.5, 0.25, 0.05, 0.35, 0.0, 0.3]
    decisions = decision_rows({f"S{i}": [rng.random() < share for share in shares] for i in range(20)})
    whole = mark_market_events(decisions, params)
    assert whole["market_event"].any() and not whole["market_event"].all()
    tally, given = MarketTally(params.market), []
    shuffled = decisions.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    for rows in np.array_split(np.arange(len(shuffled)), 7):  # a minute's symbols spread over several batches
        marked, corrections = tally.mark(shuffled.iloc[rows].reset_index(drop=True))
        given += [marked, corrections]
    pd.testing.assert_frame_equal(last_per_key(given), last_per_key([whole]))


def test_another_members_symbols_can_make_a_minute_market_wide(params):
    ours = decision_rows({f"S{i}": [i < 2] for i in range(5)})  # 2 of 5: not enough alone
    tally = MarketTally(params.market)
    marked, _ = tally.mark(ours)
    assert not marked["market_event"].any()
    corrections = tally.merge("", 0, [f"T{i}" for i in range(5)], ["T0", "T1"])  # the other member: 2 of 5
    assert sorted(corrections["symbol"]) == ["S0", "S1"] and corrections["market_event"].all()
    assert corrections["reasons"].eq("Z-SCORE 9.0σ | MARKET 4/10").all()
    assert tally.merge("", 0, ["T0", "T1"], ["T0"]).empty  # the same symbols again change nothing
    undone = tally.merge("", 0, [f"U{i}" for i in range(20)], [])  # 4 of 30 is not a market event
    assert sorted(undone["symbol"]) == ["S0", "S1"] and not undone["market_event"].any()
    assert undone["reasons"].eq("Z-SCORE 9.0σ").all()


def test_a_tally_keeps_its_newest_minutes(params):
    tally = MarketTally(params.market, keep_minutes=3)
    tally.mark(decision_rows({f"S{i}": [False] * 5 for i in range(4)}))
    assert sorted(open_time for _, open_time in tally.minutes) == [2 * MINUTE, 3 * MINUTE, 4 * MINUTE]


# -- parameters -----------------------------------------------------------------------------------


def test_written_params_land_in_a_new_directory_and_load_back(tmp_path, params):
    path = tmp_path / "models" / "today" / "model_params.json"  # train --output into a directory not made yet
    model_path = write_params(params, path)
    assert model_path.parent == path.parent and model_path.exists()
    assert load_params(path).consensus.threshold == params.consensus.threshold


def test_params_watcher_follows_live_edits_and_keeps_the_last_good_file(tmp_path, params, caplog):
    path = tmp_path / "model_params.json"
    write_params(params, path)
    watcher = ParamsWatcher(path)
    first = watcher.current()
    assert watcher.current() is first  # unchanged file: the same object
    document = json.loads(path.read_text())
    document["return_zscore"]["threshold"] = 7.5
    path.write_text(json.dumps(document))
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    second = watcher.current()
    assert second is not first and second.return_zscore.threshold == 7.5
    path.write_text("{ not json")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    with caplog.at_level(logging.ERROR, logger="market_anomaly"):
        assert watcher.current() is second
        assert watcher.current() is second
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].getMessage() and "not valid JSON" in errors[0].getMessage()


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d["consensus"].update(min_votes="two"), "consensus.min_votes"),
    (lambda d: d["volume"].pop("threshold"), "missing keys volume.threshold"),
    (lambda d: d["volume"].update(treshold=3), "unknown keys volume.treshold"),
    (lambda d: d["consensus"]["confidence"].update(HIGH=0.1), "consensus.confidence"),
    (lambda d: d["learned"].update(file="nowhere.npz"), "nowhere.npz"),
])
def test_invalid_params_are_rejected_with_the_path_and_reason(tmp_path, params, edit, reason):
    path = tmp_path / "model_params.json"
    write_params(params, path)
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    with pytest.raises(InvalidParams, match=reason) as error:
        ParamsWatcher(path).current()
    assert isinstance(error.value, ValueError) and str(path) in str(error.value)


def test_committed_model_params_load(request):
    params = load_params(request.config.rootpath / "model_params.json")
    assert params.model is not None and params.version >= 1 and params.trained_on["candles"] > 0
    assert (request.config.rootpath / params.learned.file).stat().st_size < 1_000_000


def test_the_stream_candle_frame_is_accepted_as_spark_hands_it_over(engine):
    """All candle-message columns, nulls in optional ones, the job's error/raw columns, open_time as int64."""
    candles = market(400, seed=10)
    candles = candles.assign(quote_volume=np.nan, trades=np.nan, taker_buy_quote=np.nan, event_time=0, source="ws",
                             interval=None, error=None, raw=None)
    candles.loc[::7, "taker_buy_base"] = np.nan
    candles.loc[::5, "produced_at"] = np.nan
    decisions, _ = engine.process("TESTUSDT", candles, None)
    assert len(decisions) == 400 and (decisions["interval"] == "1m").all()
    assert decisions["produced_at"].iloc[5] == 0 and decisions["produced_at"].iloc[6] == candles["produced_at"][6]
    assert decisions["taker_buy_share"].isna().sum() == len(range(0, 400, 7))


def test_a_new_model_file_is_picked_up_and_a_broken_one_rejected(tmp_path, params, caplog):
    path = tmp_path / "model_params.json"
    model_path = write_params(params, path)
    watcher = ParamsWatcher(path)
    first = watcher.current()
    retrained = train({"TESTUSDT": market(3000, seed=2)}, TrainConfig(base=small_document()))
    write_params(retrained, path)
    os.utime(model_path, ns=(0, model_path.stat().st_mtime_ns + 1_000_000_000))
    second = watcher.current()
    assert second is not first and second.learned.alarm_score == retrained.learned.alarm_score
    model_path.write_bytes(b"not a model")
    with caplog.at_level(logging.ERROR, logger="market_anomaly"):
        assert watcher.current() is second
    assert "unusable" in caplog.records[-1].getMessage()


def test_missing_params_file_fails_clearly_on_first_load(tmp_path):
    with pytest.raises(InvalidParams, match="cannot read it") as error:
        ParamsWatcher(tmp_path / "absent.json").current()
    assert error.value.path == str(tmp_path / "absent.json")
