"""Synthetic 1-minute candles for tests and benchmarks: volatility clustering, fat tails, volume following volatility.

>>> candles = synthetic_candles(500, seed=1, symbol="TESTUSDT")
>>> len(candles), bool((candles["high"] >= candles[["open", "close"]].max(axis=1)).all())
(500, True)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MINUTE = 60_000
START = 1_700_000_000_000


def synthetic_candles(n: int, seed: int = 0, symbol: str = "TESTUSDT", start: int = START) -> pd.DataFrame:
    """``n`` candles in the candle-message layout (symbol, interval, times, OHLCV, taker buys, produced_at)."""
    rng = np.random.default_rng(seed)
    # Log-volatility: noise smoothed by an exponential kernel (a vectorised AR(1) with persistence 0.97).
    log_vol = np.convolve(rng.normal(0, 0.2, n + 200), 0.97 ** np.arange(200), mode="full")[200:n + 200]
    sigma = 0.0006 * np.exp(log_vol)
    returns = sigma * rng.standard_t(4, n) / np.sqrt(2)
    close = 100 * np.exp(np.cumsum(returns))
    open_ = np.concatenate([[100.0], close[:-1]])
    wick = np.abs(rng.normal(0, 0.5, n)) * sigma * close
    volume = 10 * np.exp(log_vol + 0.5 * rng.normal(size=n)) * (1 + 50 * np.abs(returns))
    open_time = start + np.arange(n) * MINUTE
    return pd.DataFrame({
        "symbol": symbol, "interval": "1m", "open_time": open_time, "close_time": open_time + MINUTE - 1,
        "open": open_, "high": np.maximum(open_, close) + wick, "low": np.minimum(open_, close) - wick,
        "close": close, "volume": volume, "taker_buy_base": volume * rng.uniform(0.3, 0.7, n),
        "produced_at": open_time + MINUTE + 5,
    })
