"""`evaluate` on real Binance candles, leave one series out: recall on injected events, false alarms, real pumps."""

from __future__ import annotations

import pytest

from market_anomaly.candles.files import series_by_symbol
from market_anomaly.training.evaluation import evaluate, read_events

pytestmark = pytest.mark.integration

FILES = ("binance/BTCUSDT_1m.csv", "binance/ETHUSDT_1m.csv", "pumps-2020/APPCBTC_pump_2020-11-18_1800_1m.csv",
         "pumps-2020/NULSBTC_pump_2020-01-30_1700_1m.csv")


@pytest.fixture(scope="module")
def report(shared_data):
    series = series_by_symbol([shared_data / name for name in FILES])
    return evaluate(series, injections=200, seed=0, events=read_events(shared_data / "pumps-2020" / "pump_events.csv"),
                    tune_injections=0)


def test_far_fewer_alarms_than_the_naive_baseline_on_every_series(report):
    assert report["baseline_recall"]["all"]["recall"] >= 0.9  # the harness injects what the naive detector sees
    for key, entry in report["false_alarms"].items():
        assert entry["low_per_day"] * 10 < entry["baseline_per_day"], key


def test_each_series_is_scored_by_a_model_that_never_saw_it(report):
    assert "leave one series out" in report["protocol"]
    assert set(report["folds"]) == {"BTCUSDT", "ETHUSDT", "APPCBTC", "NULSBTC"}
    assert report["real_events"]["series"] == ["APPCBTC", "NULSBTC"]
