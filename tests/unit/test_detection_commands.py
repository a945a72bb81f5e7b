"""`market-anomaly train | score | evaluate` on small files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from market_anomaly.cli import main
from market_anomaly.core import DECISION_SCHEMA
from market_anomaly.candles.files import CandleFileError, read_candles, series_by_symbol
from support import market, small_document


def write_market_file(path, symbols=("AAAUSDT", "BBBUSDT"), n=2500):
    frames = [market(n, seed=i, symbol=symbol) for i, symbol in enumerate(symbols)]
    frame = pd.concat(frames, ignore_index=True)[["symbol", "open_time", "open", "high", "low", "close", "volume"]]
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture
def trained(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(small_document()))
    candles = tmp_path / "history.csv"
    write_market_file(candles)
    params = tmp_path / "model_params.json"
    assert main(["train", "--input", str(candles), "--output", str(params), "--base", str(base)]) == 0
    return params


def test_train_writes_params_and_a_small_model_file(trained):
    document = json.loads(trained.read_text())
    assert document["trained_on"]["candles"] == 5000
    assert set(document["trained_on"]["series"]) == {"AAAUSDT", "BBBUSDT"}
    assert document["learned"]["alarm_score"] > document["learned"]["typical_score"]
    assert (trained.parent / document["learned"]["file"]).stat().st_size < 10_000


def test_score_gives_one_row_per_distinct_candle_per_symbol(tmp_path, trained):
    frame = write_market_file(tmp_path / "in.csv", n=600)
    # duplicates, a gap and disorder in the input
    messy = pd.concat([frame, frame.iloc[[5, 700]]]).drop(index=[100, 101, 102]).sample(frac=1, random_state=0)
    messy.to_csv(tmp_path / "messy.csv", index=False)
    assert main(["score", "--input", str(tmp_path / "messy.csv"), "--output", str(tmp_path / "out.csv"),
                 "--params", str(trained)]) == 0
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out.columns) == [name for name, _ in DECISION_SCHEMA]
    assert len(out) == 1197 and not out.duplicated(["symbol", "open_time"]).any()
    assert out.groupby("symbol")["open_time"].apply(lambda t: t.is_monotonic_increasing).all()
    assert set(out["confidence"]) <= {"NONE", "LOW", "MEDIUM", "HIGH"}


def test_symbol_from_file_name_and_iso_timestamps(tmp_path):
    path = tmp_path / "ethusdt_1m.csv"
    pd.DataFrame({"timestamp": ["2026-01-24 20:17:00", "2026-01-24 20:18:00"], "open": [1.0, 1.1],
                  "high": [1.2, 1.2], "low": [0.9, 1.0], "close": [1.1, 1.0], "volume": [3.0, 4.0]}
                 ).to_csv(path, index=False)
    candles = read_candles(path)
    assert candles["symbol"].tolist() == ["ETHUSDT", "ETHUSDT"]
    assert candles["open_time"].tolist() == [1769285820000, 1769285880000]
    (tmp_path / "nosymbol.csv").write_text("open,high,low,close,volume\n1,1,1,1,1\n")
    with pytest.raises(CandleFileError, match="open_time"):
        read_candles(tmp_path / "nosymbol.csv")


def test_rows_without_a_symbol_and_duplicates_are_skipped_and_counted(tmp_path, caplog):
    T = 1_769_285_820_000
    path = tmp_path / "mixed.csv"
    path.write_text("symbol,open_time,open,high,low,close,volume\n"
                    f"AUSDT,{T},1,1,1,1,1\n,{T + 60_000},1,1,1,1,1\nBUSDT,{T},2,2,2,2,2\nAUSDT,{T},3,3,3,3,3\n")
    with caplog.at_level("WARNING", logger="market_anomaly"):
        candles = read_candles(path)
        series = series_by_symbol([path])
    # The symbol-less row is not given a neighbour's symbol; of two AUSDT candles at 0 the first is kept.
    assert candles[["symbol", "open_time", "close"]].values.tolist() == [["AUSDT", T, 1], ["BUSDT", T, 2],
                                                                         ["AUSDT", T, 3]]
    assert {key: frame["close"].tolist() for key, frame in series.items()} == {"AUSDT": [1], "BUSDT": [2]}
    assert "1 rows skipped (missing symbol: 1)" in caplog.text
    assert "AUSDT: 1 duplicate candles" in caplog.text


def test_evaluate_reports_recall_false_alarms_and_baseline(tmp_path, capsys):
    write_market_file(tmp_path / "m.csv", n=4000)
    base = tmp_path / "base.json"
    base.write_text(json.dumps(small_document()))
    assert main(["evaluate", "--input", str(tmp_path / "m.csv"), "--injections", "10", "--base", str(base),
                 "--json", str(tmp_path / "report.json")]) == 0
    table = capsys.readouterr().out
    assert "price_spike" in table and "baseline" in table and "held out" in table
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["recall"]["all"]["events"] == 10
    assert 0 <= report["recall"]["all"]["recall"] <= 1
    assert np.isfinite(report["false_alarm_episodes_per_symbol_day"])
    curve = report["operating_curve"]
    assert "operating curve" in table
    # Raising the threshold can only lose events and alarms; the trained threshold's point is the headline.
    assert [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)
    assert all(a["recall"] >= b["recall"] for a, b in zip(curve, curve[1:]))
    assert all(a["false_alarm_episodes_per_symbol_day"] >= b["false_alarm_episodes_per_symbol_day"]
               for a, b in zip(curve, curve[1:]))
    trained = next(p for p in curve if p["threshold"] == round(report["threshold"], 2))
    assert trained["recall"] == report["recall"]["all"]["recall"]
    assert trained["false_alarm_episodes_per_symbol_day"] == report["false_alarm_episodes_per_symbol_day"]



def test_evaluate_leave_one_out_trains_on_the_others_and_reports_real_events(tmp_path, capsys):
    for seed, symbol in enumerate(("AAAUSDT", "BBBUSDT", "CCCUSDT")):
        market(4000, seed, symbol).to_csv(tmp_path / f"{symbol}_1m.csv", index=False)
    announced = int(market(4000, 2, "CCCUSDT")["open_time"].iloc[3000])
    stamp = pd.Timestamp(announced, unit="ms", tz="UTC").strftime("%Y-%m-%d %H.%M")
    (tmp_path / "events.csv").write_text(f"symbol,pump_time_utc_announced\nCCCUSDT,{stamp}\n")
    base = tmp_path / "base.json"
    base.write_text(json.dumps(small_document()))
    assert main(["evaluate", "--leave-one-out", "--input", *(str(tmp_path / f"{s}_1m.csv") for s in
                                                              ("AAAUSDT", "BBBUSDT", "CCCUSDT")),
                 "--injections", "4", "--tune-injections", "20", "--base", str(base), "--events",
                 str(tmp_path / "events.csv"), "--json", str(tmp_path / "report.json")]) == 0
    assert "leave one series out" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["series"]) == ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    assert report["recall"]["all"]["events"] == sum(entry["injected"] for entry in report["series"].values()) > 0
    # the 4 excluded hours around the announced time are not symbol-days of false alarms
    assert report["series"]["CCCUSDT"]["days"] == round((4000 - 241) / 1440, 2)
    assert list(report["real_events"]["events"]) == ["CCCUSDT"]
    assert 0 <= report["real_events"]["caught"] <= 1
    # confidence: how often MEDIUM+ / HIGH fire untouched, and the share of injected events reaching each level
    series = report["series"].values()
    days = sum(entry["days"] for entry in series)
    confidence = report["confidence"]
    assert confidence["medium_episodes_per_symbol_week"] == round(
        sum(entry["medium_episodes"] for entry in series) * 7 / days, 3)
    assert confidence["high_episodes_per_symbol_month"] == round(
        sum(entry["high_episodes"] for entry in series) * 30 / days, 3)
    assert all(entry["high_episodes"] <= entry["medium_episodes"] <= entry["episodes"] for entry in series)
    reaching = confidence["injected_reaching"]["all"]
    assert reaching["LOW"] == report["recall"]["all"]["recall"] >= reaching["MEDIUM"] >= reaching["HIGH"]
    assert report["real_events"]["events"]["CCCUSDT"]["confidence"] in ("NONE", "LOW", "MEDIUM", "HIGH")
    # every series of this market trades each minute at a moving close: all liquid, the figures are the pooled ones
    assert {entry["market"] for entry in series} == {"liquid"} and list(report["by_market"]) == ["liquid"]
    liquid = report["by_market"]["liquid"]
    assert liquid["recall"]["all"] == report["recall"]["all"]["recall"]
    assert liquid["false_alarm_episodes_per_symbol_day"] == report["false_alarm_episodes_per_symbol_day"]
    # the operating curve: lower thresholds only add events and alarms; offset 0 is the headline figure
    curve = report["operating_curve"]
    assert [point["offset"] for point in curve] == sorted(point["offset"] for point in curve)
    for lower, higher in zip(curve, curve[1:]):
        assert lower["all"]["recall"] >= higher["all"]["recall"]
        assert (lower["all"]["false_alarm_episodes_per_symbol_day"]
                >= higher["all"]["false_alarm_episodes_per_symbol_day"])
    trained = next(point for point in curve if point["offset"] == 0)
    assert trained["all"] == trained["liquid"] == {
        "recall": report["recall"]["all"]["recall"],
        "false_alarm_episodes_per_symbol_day": report["false_alarm_episodes_per_symbol_day"],
        "series_above_1_per_day": len(report["series_above_1_per_day"])}
    assert curve[0]["all"]["false_alarm_episodes_per_symbol_day"] > trained["all"]["false_alarm_episodes_per_symbol_day"]
    assert trained["real_events_caught"] == report["real_events"]["caught"]
    assert all(a["real_events_caught"] >= b["real_events_caught"] for a, b in zip(curve, curve[1:]))
