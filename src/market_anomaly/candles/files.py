"""Reading candles for the offline commands: files (CSV or Parquet) or a whole Kafka topic.

Accepted columns: ``open, high, low, close, volume`` plus a time, either ``open_time``
(epoch ms), ``open_time_ms`` or ``timestamp`` (ISO text, taken as UTC when it has no
zone, or epoch ms); ``symbol`` is optional when the file name starts with it
(``BTCUSDT_1m.csv``). Optional columns (``quote_volume``, ``trades``, ``taker_buy_base``,
``taker_buy_quote``, ``close_time``, ``interval``, ``tick_size``: the symbol's price step) pass through. Rows failing the candle checks
(``candles.validation``, the table every edge uses) are skipped and counted by reason.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from market_anomaly.candles.validation import Limits, frame_reasons, upper_symbols

log = logging.getLogger("market_anomaly.candles")

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
NUMERIC_OPTIONAL = ("close_time", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote", "tick_size")
SYMBOL_IN_NAME = re.compile(r"^([A-Za-z0-9]+?)(?:[_\-.]|$)")


class CandleFileError(ValueError):
    """A candle file that cannot be used, with the reason."""


def read_candles(path: Path | str) -> pd.DataFrame:
    """The file's candles with ``symbol`` and ``open_time`` (int64 ms), rows in file order."""
    path = Path(path)
    try:
        frame = (pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq")
                 else pd.read_csv(path, engine="pyarrow"))
    except (OSError, ValueError) as error:
        raise CandleFileError(f"{path}: cannot read it ({error})") from None
    if "symbol" not in frame.columns:
        match = SYMBOL_IN_NAME.match(path.name)
        if not match:
            raise CandleFileError(f"{path}: no symbol column and the file name does not start with a symbol")
        frame["symbol"] = match.group(1).upper()
    frame["open_time"] = _open_time(frame, path)
    return _validated(frame, str(path)).drop(columns=[c for c in ("timestamp", "open_time_ms") if c in frame.columns])


def _validated(frame: pd.DataFrame, source: str, interval: str | None = None) -> pd.DataFrame:
    """Required columns present; symbols upper-cased, numbers numeric; rows failing the candle checks
    (``validation``: against ``interval`` when given, and the present) dropped and counted by reason."""
    missing = [name for name in ("symbol", "open_time", *PRICE_COLUMNS) if name not in frame.columns]
    if missing:
        raise CandleFileError(f"{source}: missing columns {', '.join(missing)}")
    frame["symbol"] = upper_symbols(frame["symbol"])
    for name in (*PRICE_COLUMNS, *NUMERIC_OPTIONAL):
        if name in frame.columns:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    reasons = frame_reasons(frame, Limits(interval=interval, present_ms=int(time.time() * 1000)))
    bad = reasons.notna().to_numpy()
    if bad.any():
        counts = reasons[bad].value_counts()
        log.warning("%s: %d rows skipped (%s)", source, int(bad.sum()),
                    "; ".join(f"{reason}: {count}" for reason, count in counts.items()))
        frame = frame[~bad]
    return frame


def candles_from_records(records: list, source: str) -> pd.DataFrame:
    """Candle-message JSON values (already decoded) as a validated frame; what is not an object is skipped, counted."""
    frame = pd.DataFrame.from_records([r for r in records if isinstance(r, dict)])
    skipped = len(records) - len(frame)
    if skipped:
        log.warning("%s: %d messages that are not candle JSON skipped", source, skipped)
    return _validated(frame, source)


def series_by_symbol(paths: list[Path | str], candles: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """One sorted candle series per symbol and source; a symbol found in several files gets ``SYMBOL@file``.

    ``candles`` (e.g. from ``kafka.topics.read_candle_topic``) is used instead of files when given.
    """
    sources = [(Path(path).stem, read_candles(path)) for path in paths] if candles is None else [("", candles)]
    series: dict[str, pd.DataFrame] = {}
    for name, frame in sources:
        for symbol, rows in frame.groupby("symbol", sort=True):
            key = symbol if symbol not in series else f"{symbol}@{name}"
            ordered = rows.sort_values("open_time", kind="stable")
            duplicated = ordered["open_time"].duplicated().to_numpy()
            if duplicated.any():
                log.warning("%s: %d duplicate candles (same open_time) dropped, the first of each kept", key,
                            int(duplicated.sum()))
            series[key] = ordered[~duplicated].reset_index(drop=True)
    return series


def _open_time(frame: pd.DataFrame, path: Path) -> np.ndarray:
    for name in ("open_time", "open_time_ms"):
        if name in frame.columns:
            values = pd.to_numeric(frame[name], errors="coerce")
            if values.isna().any():
                raise CandleFileError(f"{path}: column {name} has non-numeric values")
            return values.to_numpy(np.int64)
    if "timestamp" not in frame.columns:
        raise CandleFileError(f"{path}: needs an open_time (ms) or timestamp column")
    stamps = frame["timestamp"]
    if pd.api.types.is_numeric_dtype(stamps):
        return stamps.to_numpy(np.int64)
    try:
        parsed = pd.to_datetime(stamps, utc=True, format="ISO8601")
    except (ValueError, TypeError) as error:
        raise CandleFileError(f"{path}: timestamp column is not ISO time or epoch ms ({error})") from None
    return parsed.to_numpy("datetime64[ms]").astype(np.int64)
