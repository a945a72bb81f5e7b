"""What every sink shares: the decision record's columns, confidence levels, plain rows, printable text."""

from __future__ import annotations

import datetime as dt
import math
import re

import pandas as pd

from market_anomaly.core.params import CONFIDENCE_LEVELS as ANOMALY_CONFIDENCE_LEVELS

# The decision record (docs/ARCHITECTURE.md); open/high/low ride along for the dashboard's candles.
DECISION_COLUMNS = (
    "symbol", "interval", "open_time", "close_time", "open", "high", "low", "close",
    "return_pct", "log_return", "range_pct", "volume", "volume_ratio", "zscore", "votes",
    "is_anomaly", "confidence", "reasons", "market_event", "produced_at", "decided_at",
)
CONFIDENCE_LEVELS = ("NONE", *ANOMALY_CONFIDENCE_LEVELS)


def confidence_rank(level: object) -> int:
    """Position of ``level`` in NONE < LOW < MEDIUM < HIGH; anything unknown ranks as NONE."""
    text = str(level).upper()
    return CONFIDENCE_LEVELS.index(text) if text in CONFIDENCE_LEVELS else 0


def levels_at_least(minimum: str) -> list[str]:
    """The confidence levels at or above ``minimum`` (case-insensitive)."""
    return list(CONFIDENCE_LEVELS[confidence_rank(minimum):])


def plain(value: object) -> object:
    """A value JSON and both database drivers accept: NaN/NA -> None, timestamps -> epoch ms."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
        return int(stamp.timestamp() * 1000)
    if hasattr(value, "item"):  # a NumPy scalar that escaped to_dict's conversion
        return plain(value.item())
    return value


def column_values(series: pd.Series) -> list[object]:
    """A column as plain Python values, converted per column (4x faster than per value on big batches)."""
    if series.dtype == object or pd.api.types.is_datetime64_any_dtype(series):
        return [plain(value) for value in series.tolist()]
    values = series.tolist()  # NumPy -> int/float/bool
    if series.hasnans:
        return [None if missing else value for value, missing in zip(values, series.isna().tolist())]
    return values


def to_records(frame: pd.DataFrame) -> list[dict[str, object]]:
    """One dict of plain Python values per row, every column kept (unknown ones too)."""
    names = [str(name) for name in frame.columns]
    columns = [column_values(frame.iloc[:, position]) for position in range(len(names))]
    return [dict(zip(names, row)) for row in zip(*columns)]


def is_anomaly(record: dict[str, object]) -> bool:
    return bool(record.get("is_anomaly"))


# Control characters (C0, DEL, C1) and bidirectional overrides: in a terminal or a chat they can recolour,
# move the cursor, hide or reorder text. Shown as visible escapes instead.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    r"""``value`` as text without control characters: ``"\x1b[31mX"`` -> ``"\\x1b[31mX"`` (visible, inert).

    >>> printable("BTC\x1b[2J\nUSDT")
    'BTC\\x1b[2J\\nUSDT'
    """
    return _CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode(), str(value))


def format_utc(epoch_ms: object, pattern: str = "%Y-%m-%d %H:%M") -> str:
    """Epoch milliseconds as UTC text; empty for a missing time."""
    if epoch_ms is None:
        return ""
    return dt.datetime.fromtimestamp(int(epoch_ms) / 1000, dt.timezone.utc).strftime(pattern)
