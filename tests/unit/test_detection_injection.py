"""Injected anomalies: sized against the series itself, OHLC consistent, labelled correctly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from market_anomaly.training.injection import KINDS, inject, inject_random


def random_walk(n: int = 600, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    wick = np.abs(rng.normal(0, 0.0005, n)) * close
    volume = rng.lognormal(1.0, 0.5, n)
    return pd.DataFrame({
        "open_time": 1_700_000_000_000 + np.arange(n) * 60_000, "open": open_, "close": close,
        "high": np.maximum(open_, close) + wick, "low": np.minimum(open_, close) - wick, "volume": volume,
        "quote_volume": volume * close, "trades": rng.integers(10, 100, n), "taker_buy_base": volume * 0.5,
        "taker_buy_quote": volume * 0.5 * close,
    })


def assert_valid_candles(frame: pd.DataFrame) -> None:
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1) - 1e-9).all()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1) + 1e-9).all()
    assert (frame["low"] > 0).all()
    assert (frame["taker_buy_base"] <= frame["volume"] + 1e-9).all()
    # Every candle opens where the previous one closed (the generator above guarantees it before injection).
    np.testing.assert_allclose(frame["open"].to_numpy()[1:], frame["close"].to_numpy()[:-1], rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_keeps_candles_valid_and_labels_the_changed_rows(kind):
    candles = random_walk()
    injected, label = inject(candles, kind, 300, np.random.default_rng(7))
    assert_valid_candles(injected)
    assert label["kind"] == kind and label["open_time"] == candles["open_time"][300]
    changed = ~np.isclose(injected[["close", "volume"]], candles[["close", "volume"]]).all(axis=1)
    first_changed = candles["open_time"][np.flatnonzero(changed)[0]]
    assert first_changed == label["open_time"] and label["end_time"] >= label["open_time"]
    assert not changed[:300].any()
    assert candles.equals(random_walk())  # the input is not modified


def test_price_spike_is_the_requested_multiple_of_recent_sigma_and_reverts():
    candles = random_walk()
    sigma = np.std(np.diff(np.log(candles["close"].to_numpy()[240:300])))
    injected, label = inject(candles, "price_spike", 300, np.random.default_rng(1), magnitude=8.0)
    jump = abs(np.log(injected["close"][300] / candles["close"][300]))
    assert jump == pytest.approx(8.0 * sigma)
    assert injected["close"][301] == pytest.approx(candles["close"][301])
    assert label["end_time"] == candles["open_time"][301]


def test_volume_burst_reaches_the_multiple_of_recent_median_without_moving_price():
    candles = random_walk()
    median = np.median(candles["volume"][240:300])
    injected, _ = inject(candles, "volume_burst", 300, np.random.default_rng(2), magnitude=20.0)
    assert injected["volume"][300] == pytest.approx(max(20.0 * median, candles["volume"][300]))
    np.testing.assert_allclose(injected["close"], candles["close"])
    # Volume-like columns move with volume.
    assert injected["quote_volume"][300] / injected["volume"][300] == pytest.approx(
        candles["quote_volume"][300] / candles["volume"][300])


def test_on_a_thin_market_events_are_sized_by_the_minutes_that_traded_and_fill_the_silent_ones():
    # Two minutes in three without a trade: the plain median volume is 0, so 20x of it would be nothing.
    candles = random_walk()
    silent = np.arange(len(candles)) % 3 != 0
    for column in ("volume", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote"):
        candles.loc[silent, column] = 0
    traded = candles["volume"][241:301][~silent[241:301]]  # the 60 minutes before the event
    injected, label = inject(candles, "volume_burst", 301, np.random.default_rng(2), magnitude=20.0)
    burst = slice(301, 301 + (label["end_time"] - label["open_time"]) // 60_000 + 1)
    np.testing.assert_allclose(injected["volume"][burst], np.maximum(20.0 * np.median(traded), candles["volume"][burst]))
    assert_valid_candles(injected)
    # A silent minute that now trades takes the proportions of the last minute that did (row 300).
    assert silent[301] and injected["trades"][301] >= 1
    assert injected["taker_buy_base"][301] / injected["volume"][301] == pytest.approx(0.5)
    assert injected["quote_volume"][301] / injected["volume"][301] == pytest.approx(candles["close"][300], rel=1e-3)
    # A price spike on such a market trades too, instead of moving the price on no volume.
    spiked, _ = inject(candles, "price_spike", 301, np.random.default_rng(3), magnitude=8.0)
    assert spiked["volume"][301] >= 2 * np.median(traded)


def test_flash_crash_drops_then_recovers_partly_and_pump_and_dump_returns():
    candles = random_walk()
    crashed, crash = inject(candles, "flash_crash", 300, np.random.default_rng(4), magnitude=0.06)
    ratio = crashed["close"] / candles["close"]
    assert ratio.min() == pytest.approx(0.94)
    assert 0.94 < ratio.iloc[-1] < 1.0  # partial recovery, new level kept afterwards
    pumped, _ = inject(candles, "pump_and_dump", 300, np.random.default_rng(5), magnitude=0.08)
    ratio = pumped["close"] / candles["close"]
    assert ratio.max() == pytest.approx(1.08)
    assert ratio.iloc[-1] == pytest.approx(1.0)


def test_inject_random_spreads_events_over_symbols_and_kinds():
    frames = {"AAA": random_walk(3000, 1), "BBB": random_walk(3000, 2)}
    injected, labels = inject_random(frames, 10, np.random.default_rng(0), min_gap=240, earliest=1000)
    assert [label["kind"] for label in labels] == list(KINDS) * 2
    for symbol in frames:
        starts = sorted(label["open_time"] for label in labels if label["symbol"] == symbol)
        assert all(b - a >= 240 * 60_000 for a, b in zip(starts, starts[1:]))
        assert all(start >= frames[symbol]["open_time"][1000] for start in starts)
        assert_valid_candles(injected[symbol])
    with pytest.raises(ValueError):
        inject_random(frames, 1000, np.random.default_rng(0))


def test_unknown_kind_and_missing_history_are_rejected():
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        inject(random_walk(), "meteor", 300, np.random.default_rng(0))
    with pytest.raises(ValueError, match="history"):
        inject(random_walk(), "price_spike", 2, np.random.default_rng(0))


def test_volume_burst_is_sustained_for_three_to_five_minutes():
    candles = random_walk()
    median = np.median(candles["volume"][240:300])
    lengths = set()
    for seed in range(20):
        injected, label = inject(candles, "volume_burst", 300, np.random.default_rng(seed), magnitude=10.0)
        changed = np.flatnonzero(~np.isclose(injected["volume"], candles["volume"]))
        length = (label["end_time"] - label["open_time"]) // 60_000 + 1
        lengths.add(int(length))
        assert (injected["volume"][300:300 + length] >= 10.0 * median - 1e-9).all()
        assert changed.min() == 300 and changed.max() <= 300 + length - 1
    assert lengths == {3, 4, 5}


def test_volatility_burst_has_its_size_in_every_five_minutes():
    candles = random_walk()
    sigma = np.std(np.diff(np.log(candles["close"].to_numpy()[240:300])))
    for seed in range(5):
        injected, label = inject(candles, "volatility_burst", 300, np.random.default_rng(seed), magnitude=8.0)
        extra = np.diff(np.log(injected["close"].to_numpy() / candles["close"].to_numpy()))[299:]
        length = (label["end_time"] - label["open_time"]) // 60_000 + 1
        assert 10 <= length <= 20
        for start in range(0, length - length % 5, 5):
            block = extra[start:start + 5]
            assert np.sqrt(np.mean(block ** 2)) == pytest.approx(np.sqrt(8.0 ** 2 - 1) * sigma, rel=1e-6)
