"""The stream's per-bucket step, run as Spark's Python worker runs it (pandas in, pandas out), without Spark."""

import numpy as np
import pandas as pd

from market_anomaly.core import DetectionEngine, load_params
from market_anomaly.exchange.market import synthetic_candles
from market_anomaly.spark.job import CANDLE_PASSTHROUGH, decision_fields, make_detect_step

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
        for name in CANDLE_PASSTHROUGH:
            np.testing.assert_array_equal(got[name].to_numpy(), candles[name].iloc[300:320].to_numpy())
    assert output["error"].isna().all()
