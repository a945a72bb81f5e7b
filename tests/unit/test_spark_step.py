"""The stream's per-bucket step, run as Spark's Python worker runs it (pandas in, pandas out), without Spark."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from market_anomaly.core import DetectionEngine, load_params
from market_anomaly.exchange.market import synthetic_candles
from market_anomaly.sinks import SinkOptions
from market_anomaly.sinks.common import CANDLE_COLUMNS
from market_anomaly.spark.job import DetectConfig, StateBounds, decision_fields, make_detect_step
from market_anomaly.spark.workers import unpack_states

PARAMS = "model_params.json"


class GroupState:
    """The part of Spark's GroupState the step uses."""

    def __init__(self):
        self.exists, self.get = False, None

    def update(self, value):
        self.exists, self.get = True, value


def as_spark_sends(candles: pd.DataFrame) -> pd.DataFrame:
    return candles.assign(error=None, raw=None, bucket=0)


def test_a_bucket_decides_each_symbol_as_offline_and_carries_the_first_duplicates_candle():
    first, second = synthetic_candles(400, 1, "AAAUSDT"), synthetic_candles(400, 2, "BBBUSDT")
    step = make_detect_step(PARAMS, [name for name, _ in decision_fields()])
    state = GroupState()
    list(step(0, [as_spark_sends(pd.concat([first.iloc[:300], second.iloc[:300]]))], state))
    # The next micro-batch: interleaved symbols, a replay of an old candle, and a duplicate with other prices.
    duplicate = first.iloc[[310]].assign(open=1.0, high=2.0, low=0.5, close=1.5)
    batch = pd.concat([first.iloc[[299]], second.iloc[300:320], first.iloc[300:320], duplicate])
    output = pd.concat(list(step(0, [as_spark_sends(batch)], state)), ignore_index=True)

    engine = DetectionEngine(load_params(PARAMS))
    for symbol, candles in (("AAAUSDT", first), ("BBBUSDT", second)):
        expected = engine.process(symbol, candles.iloc[:320], None)[0].iloc[300:].reset_index(drop=True)
        got = output[output["symbol"] == symbol].reset_index(drop=True)
        assert got["open_time"].tolist() == candles["open_time"].iloc[300:320].tolist()  # no replay, no duplicate
        pd.testing.assert_frame_equal(got[expected.columns.drop("produced_at")],
                                      expected.drop(columns="produced_at"), check_dtype=False)
        for name in CANDLE_COLUMNS:
            np.testing.assert_array_equal(got[name].to_numpy(), candles[name].iloc[300:320].to_numpy())
    assert output["error"].isna().all()


def test_a_full_bucket_rejects_new_symbols_and_symbols_unseen_for_the_expiry_make_room():
    step = make_detect_step(PARAMS, [name for name, _ in decision_fields()],
                            StateBounds(expiry_ms=60 * 60_000, symbols_per_bucket=2))
    state = GroupState()
    a, b, c = (synthetic_candles(200, seed, name) for seed, name in ((1, "AAAUSDT"), (2, "BBBUSDT"), (3, "CCCUSDT")))
    first = pd.concat(list(step(0, [as_spark_sends(pd.concat([a.iloc[:10], b.iloc[:10], c.iloc[:10]]))], state)))
    refused = first[first["error"].notna()]
    assert set(first.loc[first["error"].isna(), "symbol"]) == {"AAAUSDT", "BBBUSDT"}
    assert refused["symbol"].tolist() == ["CCCUSDT"] * 10
    assert refused["error"].unique().tolist() == ["symbol limit reached (2 per state bucket)"]
    assert [json.loads(raw)["open_time"] for raw in refused["raw"]] == c["open_time"].iloc[:10].tolist()
    # BBBUSDT trades on for 70 minutes: AAAUSDT, unseen for more than the expiry, is forgotten ...
    second = pd.concat(list(step(0, [as_spark_sends(b.iloc[10:80])], state)))
    expected = DetectionEngine(load_params(PARAMS)).process("BBBUSDT", b.iloc[:80], None)[0].iloc[10:]
    np.testing.assert_array_equal(second["surprise"].to_numpy(), expected["surprise"].to_numpy())  # kept its state
    assert set(unpack_states(state.get[0])) == {"BBBUSDT"}
    # ... which makes room for CCCUSDT.
    third = pd.concat(list(step(0, [as_spark_sends(c.iloc[80:81])], state)))
    assert third["error"].isna().all() and third["symbol"].tolist() == ["CCCUSDT"]
    assert set(unpack_states(state.get[0])) == {"BBBUSDT", "CCCUSDT"}


def test_a_flood_of_one_off_symbols_cannot_lock_out_a_real_listing_nor_evict_a_trading_symbol():
    step = make_detect_step(PARAMS, [name for name, _ in decision_fields()],
                            StateBounds(symbols_per_bucket=3))
    state = GroupState()
    trading, listing = synthetic_candles(200, 1, "AAAUSDT"), synthetic_candles(200, 2, "NEWUSDT")
    list(step(0, [as_spark_sends(trading.iloc[:100])], state))  # warmed up: past every detector's shortest warm-up
    flood = pd.concat([synthetic_candles(1, seed, f"X{seed}USDT").assign(open_time=trading["open_time"].iloc[100])
                       for seed in range(4)])
    first = pd.concat(list(step(0, [as_spark_sends(flood)], state)))
    assert first.loc[first["error"].isna(), "symbol"].tolist() == ["X0USDT", "X1USDT"]  # the bucket is full
    assert first.loc[first["error"].notna(), "symbol"].tolist() == ["X2USDT", "X3USDT"]  # nothing silent yet
    # A minute later a real listing arrives: the longest silent one-off symbol gives way, the trading one stays.
    batch = pd.concat([trading.iloc[100:102], listing.iloc[101:103]])
    second = pd.concat(list(step(0, [as_spark_sends(batch)], state)))
    assert second["error"].isna().all() and second["symbol"].tolist() == ["AAAUSDT"] * 2 + ["NEWUSDT"] * 2
    assert set(unpack_states(state.get[0])) == {"AAAUSDT", "X1USDT", "NEWUSDT"}
    expected = DetectionEngine(load_params(PARAMS)).process("AAAUSDT", trading.iloc[:102], None)[0].iloc[100:]
    np.testing.assert_array_equal(second["surprise"].iloc[:2].to_numpy(), expected["surprise"].to_numpy())
    # The last one-off symbol gives way too; then, with every symbol in the bucket trading, a newcomer is refused.
    late = [synthetic_candles(1, seed, name).assign(open_time=listing["open_time"].iloc[103])
            for seed, name in ((8, "YUSDT"), (9, "ZUSDT"))]
    third = pd.concat(list(step(0, [as_spark_sends(pd.concat([trading.iloc[103:104], listing.iloc[103:104],
                                                              *late]))], state)))
    assert third.loc[third["error"].notna(), "symbol"].tolist() == ["ZUSDT"]
    assert set(unpack_states(state.get[0])) == {"AAAUSDT", "NEWUSDT", "YUSDT"}


@pytest.mark.parametrize("max_symbols, buckets", [(200, 16), (10_000, 16), (2_000, 7), (16, 16)])
def test_the_buckets_together_never_hold_more_than_max_symbols(max_symbols, buckets):
    job = DetectConfig(kafka={}, params=Path("model_params.json"), checkpoint_dir=Path("checkpoint"),
                       sinks=SinkOptions(), max_symbols=max_symbols, state_buckets=buckets)
    per_bucket = job.state_bounds().symbols_per_bucket
    assert per_bucket * buckets <= max_symbols < (per_bucket + 1) * buckets


@pytest.mark.parametrize("max_symbols, buckets", [(8, 16), (10, 0)])
def test_fewer_symbols_than_state_buckets_is_refused_with_the_reason(max_symbols, buckets):
    with pytest.raises(ValueError, match="--state-buckets must be between 1 and --max-symbols"):
        DetectConfig(kafka={}, params=Path("model_params.json"), checkpoint_dir=Path("checkpoint"),
                     sinks=SinkOptions(), max_symbols=max_symbols, state_buckets=buckets)
