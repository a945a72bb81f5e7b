"""What every sink shares: the decision record, confidence levels, plain rows and JSON, printable text."""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from market_anomaly.core import DECISION_SCHEMA
from market_anomaly.core.params import CONFIDENCE_RANKS as CONFIDENCE_LEVELS

# The candle's prices the job carries next to each decision (the dashboard draws candlesticks).
CANDLE_COLUMNS = ("open", "high", "low")
# The decision record every sink receives, (name, NumPy dtype), defined once: the core's decision
# (its scores derive from its detectors), the candle's prices, and when the job decided. The Spark
# schema is built from it; the database keeps DECISION_COLUMNS by name and the other numbers as JSON.
DECISION_RECORD: tuple[tuple[str, str], ...] = (
    *DECISION_SCHEMA, *((name, "float64") for name in CANDLE_COLUMNS), ("decided_at", "int64"))
# The record's columns the database stores by name (migration 1 creates them; a test checks they agree).
DECISION_COLUMNS = (
    "symbol", "interval", "open_time", "close_time", "open", "high", "low", "close",
    "return_pct", "log_return", "range_pct", "volume", "volume_ratio", "zscore", "votes",
    "is_anomaly", "confidence", "reasons", "market_event", "produced_at", "decided_at",
)


def confidence_rank(level: object) -> int:
    """Position of ``level`` in NONE < LOW < MEDIUM < HIGH; anything unknown ranks as NONE."""
    text = str(level).upper()
    return CONFIDENCE_LEVELS.index(text) if text in CONFIDENCE_LEVELS else 0


def levels_at_least(minimum: str) -> list[str]:
    """The confidence levels at or above ``minimum`` (case-insensitive)."""
    return list(CONFIDENCE_LEVELS[confidence_rank(minimum):])


def plain(value: object) -> object:
    """A value JSON and both database drivers accept: NaN/NA/+-inf -> None, timestamps -> epoch ms."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and not math.isfinite(value):
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
        values = series.tolist()
        if series.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
            return values  # text only (symbols, reasons): nothing to convert
        return [plain(value) for value in values]
    values = series.tolist()  # NumPy -> int/float/bool
    missing = series.isna()
    if series.dtype.kind == "f":
        missing |= series.abs() == math.inf
    if missing.any():
        return [None if absent else value for value, absent in zip(values, missing.tolist())]
    return values


def to_records(frame: pd.DataFrame) -> list[dict[str, object]]:
    """One dict of plain Python values per row, every column kept (unknown ones too)."""
    names = [str(name) for name in frame.columns]
    columns = [column_values(frame.iloc[:, position]) for position in range(len(names))]
    return [dict(zip(names, row)) for row in zip(*columns)]


def json_objects(frame: pd.DataFrame, omit_nulls: bool = False, encoded: bool = False) -> list:
    """Each row as one JSON object, columns in order, built a column at a time in Arrow (a fifth of
    ``json.dumps``'s time per row): what ``json.loads`` reads back equals what ``json.dumps`` wrote, floats
    as floats (``1.0``, not ``1``), NaN and +-inf as null. ``omit_nulls``: a null leaves its key out, and a
    row without any value is None. ``encoded``: UTF-8 bytes instead of text.

    >>> json_objects(pd.DataFrame({"a": [1.0, float("nan")], "b": ["x", None]}))
    ['{"a":1.0,"b":"x"}', '{"a":null,"b":null}']
    >>> json_objects(pd.DataFrame({"a": [1.5, float("nan")], "b": [float("inf"), float("nan")]}), omit_nulls=True)
    ['{"a":1.5}', None]
    """
    if frame.empty:
        return []
    parts = []
    for position, name in enumerate(frame.columns):
        key = pa.scalar(("," if omit_nulls or position else "{") + json.dumps(str(name)) + ":")
        values = _json_values(frame.iloc[:, position])
        if omit_nulls:  # joining with a null gives null: the whole ``,"key":value`` then drops out
            parts.append(pc.fill_null(pc.binary_join_element_wise(key, values, ""), ""))
        else:
            parts += [key, pc.fill_null(values, "null")]
    if omit_nulls:
        members = pc.binary_join_element_wise(*parts, "")
        objects = pc.if_else(pc.equal(members, ""), pa.scalar(None, pa.string()),
                             pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(members, 1), "}", ""))
    else:
        objects = pc.binary_join_element_wise(*parts, pa.scalar("}"), "")
    return (objects.cast(pa.binary()) if encoded else objects).to_pylist()


def _json_values(column: pd.Series) -> pa.Array:
    """A column's values as JSON text, null where the value is missing (NaN, +-inf, None)."""
    kind = column.dtype.kind
    if kind == "f":
        values = column.to_numpy(float)
        finite = np.isfinite(values)
        text = pc.cast(pa.array(values, mask=~finite), pa.string())
        # Arrow writes integral floats without a point ("2", "-0"; "1e+10" is fine): JSON readers would take
        # them for ints. Only those rows are looked at (a regular expression over every value took 3x longer).
        integral = np.flatnonzero(finite & (values == np.trunc(values)))
        bare = integral[~pc.match_substring(text.take(integral), "e").to_numpy(zero_copy_only=False)]
        if len(bare):
            point = np.zeros(len(values), bool)
            point[bare] = True
            text = pc.if_else(pa.array(point), pc.binary_join_element_wise(text, ".0", ""), text)
        return text
    if kind in "iub" and not isinstance(column.dtype, pd.api.extensions.ExtensionDtype):  # bool casts to true/false
        return pc.cast(pa.array(column.to_numpy()), pa.string())
    # Text and anything else: each distinct value encoded once (symbols, confidences and reasons repeat).
    codes, uniques = pd.factorize(column)
    texts = [json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, default=str)
             for value in uniques.tolist()]
    return pa.array([*texts, None], pa.string()).take(pa.array(np.where(codes < 0, len(texts), codes)))


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
    """Epoch milliseconds as UTC text; empty for a missing time, ``?`` for one no calendar holds."""
    if epoch_ms is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(int(epoch_ms) / 1000, dt.timezone.utc).strftime(pattern)
    except (ValueError, OverflowError, OSError):
        return "?"


def json_text(value: object) -> str:
    """``json.dumps`` for API answers and messages: NaN and +-inf (which JSON lacks, and a browser's parser
    refuses) as null, at any depth.

    >>> json_text({"a": [1.5, float("inf")], "b": float("nan")})
    '{"a": [1.5, null], "b": null}'
    """
    return json.dumps(_finite(value), default=str, allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
