"""`evaluate`'s protocol: leave one series out, three blocks (injected, untouched, labelled real events)."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from market_anomaly.training.evaluation import evaluate, read_events
from support import market, small_document, thin_market


def test_events_file_formats():
    text = "symbol,pump_time_utc_announced\nAPPCBTC,2020-11-18 18.00\nNASBTC,2020-05-30T16:00:00Z\n"
    assert read_events(io.StringIO(text))["time_ms"].tolist() == [1605722400000, 1590854400000]
    assert read_events(io.StringIO("symbol,time\nX,1605722400000\n"))["time_ms"].tolist() == [1605722400000]
    with pytest.raises(ValueError, match="symbol column"):
        read_events(io.StringIO("name,when\nX,1\n"))


def test_leave_one_series_out_reports_three_blocks_per_series_and_pooled():
    series = {"AAAUSDT": market(3000, seed=21, symbol="AAAUSDT"), "BBBUSDT": market(3000, seed=22, symbol="BBBUSDT"),
              "THINBTC": thin_market(3000, seed=23)}
    pump_at = int(series["THINBTC"]["open_time"].iloc[2500])
    events = pd.DataFrame({"symbol": ["THINBTC", "GONEBTC"], "time_ms": [pump_at, 0]})
    report = evaluate(series, injections=12, seed=0, base=small_document(), events=events, tune_injections=0)
    assert set(report["folds"]) == set(series)
    assert all(fold["trained_on_candles"] == 6000 for fold in report["folds"].values())  # the two others
    assert report["recall"]["all"]["events"] == 12 and set(report["recall_by_series"]) == set(series)
    assert set(report["false_alarms"]) == set(series)
    # the thin series' quiet candles leave out the seed and the [-60, +180] minutes around its event
    assert report["false_alarms"]["THINBTC"]["days"] == pytest.approx((2000 - 241) / 1440, abs=0.002)
    assert report["real_events"]["series"] == ["THINBTC"] and report["real_events"]["unmatched_symbols"] == ["GONEBTC"]
    assert len(report["real_events"]["events"]) == 1 and len(report["operating_curve"]) == 11
    assert report["false_alarms_pooled"]["baseline_per_day"] > report["false_alarms_pooled"]["low_per_day"]


def test_a_single_series_cannot_be_left_out():
    with pytest.raises(ValueError, match="at least two series"):
        evaluate({"AAAUSDT": market(2000, seed=1)}, injections=2, base=small_document())
