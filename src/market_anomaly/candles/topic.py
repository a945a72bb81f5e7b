"""A candle topic's records: the fields a value carries, and its parser in Python.

The Spark stream parses values in the JVM (``spark.job.parse_candles``, from ``CANDLE_FIELDS`` in Spark
types); the decider, which runs without Spark, parses them here, with the same table of checks
(``validation``) and the same reasons, so a record is rejected for the same reason by either runner.
Types follow Spark's JSON reader: a field of the wrong type is missing (a quoted number is not a
number, a float is not a whole number), and ``NaN``/``Infinity`` are numbers that fail the finiteness check.

>>> from market_anomaly.candles.validation import Limits
>>> good = b'{"symbol": "btcusdt", "open_time": 1700000040000, "open": 1, "high": 2, "low": 1, "close": 2, "volume": 3}'
>>> parsed = parse_values([good, b"[1]", b'{"symbol": "BTCUSDT"}'], [None] * 3, Limits(interval="1m"))
>>> parsed["symbol"].tolist(), parsed["error"].tolist()
(['BTCUSDT', None, 'BTCUSDT'], [None, 'not a JSON object', 'missing open_time'])
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from market_anomaly.candles.validation import (EARLIEST_OPEN_TIME, MAX_RAW_BYTES, MAX_SYMBOL_LENGTH, NOT_A_CANDLE,
                                               NOT_AN_OBJECT, RAW_BYTES, REQUIRED, Limits, frame_reasons, raw_reason,
                                               upper_symbols)

CANDLE_FIELDS = (
    ("symbol", "string"), ("interval", "string"), ("open_time", "long"), ("close_time", "long"),
    ("open", "double"), ("high", "double"), ("low", "double"), ("close", "double"), ("volume", "double"),
    ("quote_volume", "double"), ("trades", "long"), ("taker_buy_base", "double"), ("taker_buy_quote", "double"),
    ("event_time", "long"), ("source", "string"), ("tick_size", "double"), ("produced_at", "long"),
)
# A quoted non-finite number Spark's JSON reader takes as a double.
_NON_FINITE = {"NaN": math.nan, "+NaN": math.nan, "-NaN": math.nan, "Infinity": math.inf, "+Infinity": math.inf,
               "+INF": math.inf, "-Infinity": -math.inf, "-INF": -math.inf}
_LONG_RANGE = (-(2**63), 2**63)

_ARROW_OPTIONS = pj.ParseOptions(
    explicit_schema=pa.schema([(name, {"string": pa.string(), "long": pa.int64(), "double": pa.float64()}[kind])
                               for name, kind in CANDLE_FIELDS]),
    unexpected_field_behavior="ignore")


def _string(value):
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)  # Spark keeps a number's or an object's JSON text


def _long(value):
    return value if type(value) is int and _LONG_RANGE[0] <= value < _LONG_RANGE[1] else None


def _double(value):
    if type(value) in (int, float):
        return float(value)
    return _NON_FINITE.get(value) if isinstance(value, str) else None


_CONVERT = {"string": _string, "long": _long, "double": _double}


def parse_values(values: Sequence[bytes | None], recorded_ms: Sequence[int | None], limits: Limits,
                 check_present: bool = True) -> pd.DataFrame:
    """Kafka record values (and when Kafka recorded each, epoch ms or None) -> one row each: the
    ``CANDLE_FIELDS`` (numbers as float64, NaN when missing; strings as objects), ``error`` (None when
    valid) and ``raw`` (the value as text, invalid UTF-8 replaced, cut to ``RAW_BYTES`` characters; rejects only).

    As in the stream: the symbol is upper-cased, and kept on a reject only when it is a short one (never a
    huge key); a missing interval is the model's; a missing ``produced_at`` is the record's time. The present
    each candle is checked against is its record's time (``limits.present_ms`` is not used); ``check_present``
    False accepts candles from the future (``--accept-future-candles``).
    """
    columns, carried_nan, errors = _parse_together(values) or _parse_each(values)
    # The checks read NaN as missing; a NaN the record carries is a number that is not finite.
    checked_columns = {name: np.where(mask, math.inf, columns[name]) for name, mask in carried_nan.items()}
    columns["symbol"] = upper_symbols(columns["symbol"])
    frame = pd.DataFrame(columns)
    recorded = pd.Series([math.nan if at is None else at for at in recorded_ms], dtype=float)
    nothing = np.logical_and.reduce([frame[name].isna().to_numpy() for name in REQUIRED])
    error = pd.Series(errors, dtype=object)
    error[error.isna() & nothing] = NOT_A_CANDLE
    present = recorded.where(recorded >= EARLIEST_OPEN_TIME) if check_present else None
    checked = error.isna()
    if checked.any():
        checks = frame.assign(**checked_columns)[checked]
        reasons = frame_reasons(checks, replace(limits, present_ms=None if present is None else present[checked]))
        error[checked] = reasons
    frame["interval"] = frame["interval"].fillna(limits.interval or "1m")
    frame["produced_at"] = frame["produced_at"].fillna(recorded)
    rejected = np.flatnonzero(error.notna().to_numpy())
    symbols = frame["symbol"].to_numpy(object)
    raw = np.full(len(frame), None, dtype=object)
    for row in rejected:  # few: the rejects alone are looked at
        if isinstance(symbols[row], str) and len(symbols[row]) > MAX_SYMBOL_LENGTH:
            symbols[row] = None
        raw[row] = _raw_text(values[row])
    frame["symbol"] = symbols
    frame["error"] = error
    frame["raw"] = raw
    return frame


def _parse_together(values: Sequence[bytes | None]):
    """The usual poll, every value a flat JSON object of the right types on one line: parsed by Arrow's JSON
    reader in one call, about a quarter of ``_parse_each``'s time. None when any value is not like that (Arrow
    refuses the whole block on one bad value): then each value is parsed on its own, with its own reason."""
    try:
        lines = b"\n".join(values)  # a None among them raises
    except TypeError:
        return None
    # One value per line, none too large: checked on the joined bytes, not value by value.
    if (not values or lines.count(b"\n") != len(values) - 1 or b"\r" in lines
            or max(map(len, values)) > MAX_RAW_BYTES):
        return None
    try:
        table = pj.read_json(pa.py_buffer(lines), parse_options=_ARROW_OPTIONS,
                             read_options=pj.ReadOptions(block_size=max(1 << 20, len(lines) + 1)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != len(values):
        return None
    columns, carried_nan = {}, {}
    for name, kind in CANDLE_FIELDS:
        column = table.column(name)
        if kind == "string":  # each distinct text converted once (symbols and intervals repeat)
            encoded = pc.dictionary_encode(column.combine_chunks())
            texts = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
            columns[name] = texts[encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)]
            continue
        columns[name] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        if kind == "double":
            nan = pc.fill_null(pc.is_nan(column), False).to_numpy(zero_copy_only=False)
            if nan.any():
                carried_nan[name] = nan
    return columns, carried_nan, [None] * len(values)


def _parse_each(values: Sequence[bytes | None]):
    """Each value on its own (any poll): its raw checks, JSON, then each field converted as Spark's reader does."""
    objects, errors = [], []
    for value in values:
        problem = raw_reason(value)
        document = None
        if problem is None:
            text = value.decode("utf-8")
            if not text.lstrip().startswith("{"):
                problem = NOT_AN_OBJECT
            else:
                try:
                    document = json.loads(text)
                except ValueError:
                    pass
                if not isinstance(document, dict):
                    document, problem = None, NOT_A_CANDLE
        objects.append(document or {})
        errors.append(problem)
    columns, carried_nan = {}, {}
    for name, kind in CANDLE_FIELDS:
        convert = _CONVERT[kind]
        column = [convert(document.get(name)) for document in objects]
        if kind == "string":
            columns[name] = np.array(column, dtype=object)
            continue
        columns[name] = np.array([math.nan if item is None else item for item in column], dtype=float)
        nan = np.array([item is not None and item != item for item in column], dtype=bool)
        if nan.any():
            carried_nan[name] = nan
    return columns, carried_nan, errors


def _raw_text(value: bytes | None) -> str | None:
    return None if value is None else value[:RAW_BYTES * 4].decode("utf-8", errors="replace")[:RAW_BYTES]
