"""`evaluate` on the real Binance candles: held-out recall on injected events and false alarms, vs the baseline."""

from __future__ import annotations

import pytest

from market_anomaly.detection.candle_files import series_by_symbol
from market_anomaly.detection.evaluation import evaluate

pytestmark = pytest.mark.integration

FILES = ("BTCUSDT_1m.csv", "ETHUSDT_1m.csv", "BTCUSDT_1m_2019-10.csv")


@pytest.fixture(scope="module")
def report(shared_data):
    series = series_by_symbol([shared_data / "binance" / name for name in FILES])
    return evaluate(series, injections=200, seed=0)


def test_far_fewer_false_alarms_than_the_naive_baseline_at_high_recall(report):
    recall = {kind: entry["recall"] for kind, entry in report["recall"].items()}
    assert report["baseline_recall"]["all"]["recall"] >= 0.9  # the harness injects what the naive detector sees
    assert report["false_alarm_episodes_per_symbol_day"] <= 1.1
    assert report["false_alarm_episodes_per_symbol_day"] * 20 < report["baseline_false_alarm_episodes_per_symbol_day"]
    assert recall["all"] >= 0.8
    assert recall["flash_crash"] >= 0.95 and recall["price_spike"] >= 0.9 and recall["pump_and_dump"] >= 0.8
    assert report["recall"]["all"]["median_delay_min"] <= 2


@pytest.mark.xfail(strict=True, reason="issue 3 targets not met yet: weak volume bursts (8-19x median, no price "
                                       "move) and weak volatility bursts look like real minutes of these markets")
def test_issue_targets(report):
    assert report["recall"]["all"]["recall"] >= 0.95
    assert report["false_alarm_episodes_per_symbol_day"] <= 1.0
