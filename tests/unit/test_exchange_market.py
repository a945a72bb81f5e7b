"""The simulated market: realistic statistics, consistency, determinism, replay and injected anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from market_anomaly.training.injection import KINDS
from market_anomaly.exchange.market import (COLUMNS, Injection, Market, ReplaySource, SyntheticSource,
                                            profile_for, random_injections, read_candle_file)

MINUTE = 60_000
START = 1_769_285_820_000   # 2026-01-24 20:17 UTC


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return SyntheticSource(["BTCUSDT"], "1m", 7, START).next_block("BTCUSDT", 10_000)


def assert_consistent(frame: pd.DataFrame) -> None:
    body_top = np.maximum(frame["open"], frame["close"])
    body_bottom = np.minimum(frame["open"], frame["close"])
    assert (frame["high"] >= body_top).all() and (frame["low"] <= body_bottom).all() and (frame["low"] > 0).all()
    assert (frame["open"].to_numpy()[1:] == frame["close"].to_numpy()[:-1]).all(), "open must be the previous close"
    assert (frame["volume"] > 0).all() and (frame["taker_buy_base"] <= frame["volume"]).all()
    assert (frame["trades"] >= 1).all()
    assert (np.diff(frame["open_time"]) == MINUTE).all()


def test_ten_thousand_candles_are_consistent(btc):
    assert list(btc.columns) == list(COLUMNS) and len(btc) == 10_000
    assert btc["open_time"].iloc[0] == START and btc["open"].iloc[0] == 90_000.0
    assert_consistent(btc)


def test_returns_have_fat_tails_and_volatility_clusters(btc):
    returns = np.diff(np.log(btc["close"].to_numpy()))
    standardized = (returns - returns.mean()) / returns.std()
    assert np.mean(standardized ** 4) > 5.0                      # normal: 3
    size = np.abs(returns)
    assert np.corrcoef(size[:-1], size[1:])[0, 1] > 0.1         # |r| autocorrelated: clustering
    assert 0.5 * 0.0007 < returns.std() < 2 * 0.0007             # the profile's per-minute volatility


def test_volume_rises_with_the_size_of_the_move_and_taker_share_is_balanced(btc):
    size = np.abs(np.diff(np.log(btc["close"].to_numpy())))
    assert np.corrcoef(np.log(btc["volume"].to_numpy()[1:]), size)[0, 1] > 0.2
    share = btc["taker_buy_base"] / btc["volume"]
    assert 0.45 < share.mean() < 0.55
    rising = btc["close"] > btc["open"]
    assert share[rising].mean() > share[~rising].mean()         # buyers dominate rising candles
    assert (btc["quote_volume"] / btc["volume"]).between(btc["low"], btc["high"]).all()


def test_same_seed_same_market_and_symbols_are_independent():
    first = SyntheticSource(["BTCUSDT", "ETHUSDT"], "1m", 7, START)
    again = SyntheticSource(["ETHUSDT"], "1m", 7, START)
    other_seed = SyntheticSource(["ETHUSDT"], "1m", 8, START)
    eth = first.next_block("ETHUSDT", 300)
    pd.testing.assert_frame_equal(eth, again.next_block("ETHUSDT", 300))
    assert not eth["close"].equals(other_seed.next_block("ETHUSDT", 300)["close"])
    assert abs(eth["open"].iloc[0] - 3000) < 1e-9


def test_blocks_continue_each_other():
    source = SyntheticSource(["SOLUSDT"], "5m", 1, START)
    frame = pd.concat([source.next_block("SOLUSDT", n) for n in (1, 7, 50)], ignore_index=True)
    assert frame["open_time"].tolist() == [START + i * 300_000 for i in range(58)]
    assert (frame["open"].to_numpy()[1:] == frame["close"].to_numpy()[:-1]).all()


def test_unknown_symbols_get_a_stable_plausible_profile():
    assert profile_for("FOOUSDT") == profile_for("FOOUSDT")
    assert profile_for("FOOUSDT") != profile_for("BARUSDT")
    assert 1e-3 <= profile_for("FOOUSDT").price <= 1e3
    assert profile_for("BTCUSDT").price == 90_000.0


def market(symbols=("BTCUSDT",), injections=(), **kwargs) -> Market:
    return Market(SyntheticSource(symbols, "1m", 7, START), injections, **kwargs)


def test_market_candle_and_range_queries():
    m = market()
    candle = m.candle("BTCUSDT", START + 500 * MINUTE)
    assert candle["open_time"] == START + 500 * MINUTE and candle["first_trade_id"] > 0
    assert m.candle("BTCUSDT", START - MINUTE) is None and m.candle("BTCUSDT", START + 30) is None
    window = m.candles("BTCUSDT", START + 10 * MINUTE, START + 20 * MINUTE, 5)
    assert window["open_time"].tolist() == [START + i * MINUTE for i in range(10, 15)]
    latest = m.candles("BTCUSDT", None, START + 20 * MINUTE, 3)
    assert latest["open_time"].tolist() == [START + i * MINUTE for i in (18, 19, 20)]
    ids = m.candles("BTCUSDT", START, START + 3 * MINUTE, 10)
    assert (ids["first_trade_id"].diff().dropna() == ids["trades"].iloc[:-1].to_numpy()).all()


def test_injection_uses_the_injector_and_labels_it():
    calls = []

    def stub(candles, kind, at, rng, magnitude=None):
        calls.append((len(candles), kind, at, magnitude))
        changed = candles.copy()
        changed.loc[at, "volume"] *= 100
        return changed, {"kind": kind, "open_time": int(candles["open_time"].iat[at]),
                         "end_time": int(candles["open_time"].iat[at])}

    at = START + 300 * MINUTE
    plain = market().candle("BTCUSDT", at)
    m = market(injections=[Injection("BTCUSDT", "volume_burst", at, 5.0)], injector=stub)
    assert calls[0][1:] == ("volume_burst", Market.INJECTION_CONTEXT, 5.0)
    assert m.labels == [{"symbol": "BTCUSDT", "kind": "volume_burst", "open_time": at, "end_time": at}]
    assert m.candle("BTCUSDT", at)["volume"] == pytest.approx(plain["volume"] * 100)


def test_level_shifting_injection_keeps_every_later_open_at_the_previous_close():
    at = START + 200 * MINUTE
    m = market(injections=[Injection("BTCUSDT", "flash_crash", at, 0.08)])
    served = m.candles("BTCUSDT", START, START + 2_000 * MINUTE, 3_000)   # beyond what was generated at injection
    assert len(served) == 2_001
    assert_consistent(served[list(COLUMNS)])
    [label] = m.labels
    assert label["kind"] == "flash_crash" and label["open_time"] == at and label["end_time"] > at
    crash = served[served["open_time"].between(at, label["end_time"])]
    assert crash["low"].min() < 0.95 * served["close"][served["open_time"] == at - MINUTE].item()


def test_random_injections_respect_warm_up_spacing_and_kinds():
    live = START + 1000 * MINUTE
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    chosen = random_injections(symbols, KINDS, 12, live, "1m", np.random.default_rng(3))
    assert chosen == random_injections(symbols, KINDS, 12, live, "1m", np.random.default_rng(3))
    assert len(chosen) == 12 and {item.kind for item in chosen} == set(KINDS)
    assert all(item.open_time >= live + 15 * MINUTE and item.open_time % MINUTE == 0 for item in chosen)
    for symbol in symbols:
        times = sorted(item.open_time for item in chosen if item.symbol == symbol)
        assert all(b - a >= 10 * MINUTE for a, b in zip(times, times[1:]))
    planned = [Injection("BTCUSDT", "price_spike", live + 20 * MINUTE)]
    around_planned = random_injections(["BTCUSDT"], KINDS, 4, live, "1m", np.random.default_rng(3), planned=planned)
    assert all(abs(item.open_time - planned[0].open_time) >= 10 * MINUTE for item in around_planned)


def test_replay_reads_real_candles(shared_data):
    path = shared_data / "binance" / "BTCUSDT_1m.csv"
    source = ReplaySource([path, shared_data / "binance" / "ETHUSDT_1m.csv"], "1m", 7)
    assert source.symbols == ("BTCUSDT", "ETHUSDT")
    first = source.next_block("BTCUSDT", 2)
    # 2026-01-24 20:17:00,89391.58,89391.58,89391.57,89391.58,0.37558
    assert first.iloc[0][["open_time", "open", "low", "volume"]].tolist() == [1769285820000, 89391.58, 89391.57,
                                                                              0.37558]
    assert (first["taker_buy_base"] <= first["volume"]).all() and (first["trades"] >= 1).all()
    # ETH starts a minute later, so the live start leaves both symbols 1000 candles of history.
    assert source.live_start(1000) == 1769285880000 + 1000 * MINUTE
    with pytest.raises(ValueError, match="interval is 1h"):
        read_candle_file(path, "1h")


def test_replay_symbol_column_and_millisecond_open_times(tmp_path, shared_data):
    symbol, frame = read_candle_file(shared_data / "binance" / "BTCUSDT_1m_2019-10.csv", "1m")
    assert symbol == "BTCUSDT" and frame["open_time"].iloc[0] == 1571176200000
    csv = tmp_path / "candles.csv"
    start = 1_600_000_020_000  # a minute boundary: candle files are checked like every other input
    pd.DataFrame({"symbol": "xyzusdt", "open_time": [start, start + MINUTE], "open": 1.0, "high": 1.2, "low": 0.9,
                  "close": 1.1, "volume": 3.0}).to_csv(csv, index=False)
    replay = Market(ReplaySource([csv], "1m", 7))
    assert replay.symbols == ("XYZUSDT",)
    assert replay.candles("XYZUSDT", start, start + 10 * MINUTE, 10)["open_time"].tolist() == [start, start + MINUTE]
    assert replay.candle("XYZUSDT", start + 2 * MINUTE) is None


def test_docstring_examples():
    import doctest

    from market_anomaly.exchange import market

    result = doctest.testmod(market)
    assert result.attempted > 0 and result.failed == 0
