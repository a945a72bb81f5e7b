"""The sinks' JSON builder (``common.json_objects``) reads back as what ``json.dumps`` writes, row by row."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from market_anomaly.sinks.common import json_objects


def dumped(frame: pd.DataFrame, omit_nulls: bool = False) -> list[str | None]:
    """The reference: one ``json.dumps`` per row of plain Python values, non-finite floats as null."""
    rows = []
    for record in frame.astype(object).to_dict("records"):
        values = {str(key): None if isinstance(value, float) and not math.isfinite(value) else value
                  for key, value in record.items()}
        if omit_nulls:
            values = {key: value for key, value in values.items() if value is not None}
        rows.append(json.dumps(values, ensure_ascii=False) if values or not omit_nulls else None)
    return rows


def parsed(texts: list) -> list:
    return [None if text is None else json.loads(text) for text in texts]


def typed(value: object) -> object:
    """A parsed value with its type, so 1 and 1.0 (and True and 1) differ."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    return (type(value).__name__, value)


MIXED = pd.DataFrame({
    "symbol": ["BTCUSDT", 'ÉTH"X\\', "\u202eRLO\n\t\x01", None],
    "open_time": np.array([1, 2, -3, 2**62], dtype="int64"),
    "votes": np.array([0, 1, 2, 3], dtype="int32"),
    "zscore": [0.1 + 0.2, np.inf, -np.inf, np.nan],
    "close": [1.0, -0.0, 100.0, 1e22],
    "tiny": [6.1e-8, 1e-5, 5e-324, 1.7976931348623157e308],
    "is_anomaly": [True, False, True, False],
    "market_event": pd.Series([True, None, False, np.nan], dtype=object),
    "reasons": ["Z-SCORE 7.2σ | VOLUME 14x", None, "", np.nan],
    "count": pd.array([1, None, 3, None], dtype="Int64"),
})


def test_every_kind_of_value_reads_back_as_json_dumps_writes_it():
    got = json_objects(MIXED)
    assert [typed(row) for row in parsed(got)] == [typed(row) for row in parsed(dumped(MIXED))]
    first, second, *_ = parsed(got)
    assert first["close"] == 1.0 and isinstance(first["close"], float) and second["close"] == 0.0
    assert second["zscore"] is None and second["reasons"] is None and second["market_event"] is None
    assert second["symbol"] == 'ÉTH"X\\' and '"ÉTH\\"X\\\\"' in got[1]  # unicode kept, quotes escaped
    assert list(first) == list(MIXED.columns)  # columns in order


def test_bytes_are_the_text_in_utf8():
    assert json_objects(MIXED, encoded=True) == [text.encode() for text in json_objects(MIXED)]


def test_omitting_nulls_leaves_their_keys_out_and_an_all_null_row_is_none():
    numbers = pd.DataFrame({"window_mean": [1.25, np.nan, np.nan, 3.0], "volume_change": [np.inf, np.nan, 2.0, 1.0],
                            "n": pd.array([None, None, 5, 6], dtype="Int64")})
    got = json_objects(numbers, omit_nulls=True)
    assert got[1] is None
    assert [typed(row) for row in parsed(got)] == [typed(row) for row in parsed(dumped(numbers, omit_nulls=True))]
    assert parsed(got)[0] == {"window_mean": 1.25}


@pytest.mark.parametrize("omit_nulls", [False, True])
def test_a_random_float_frame_with_nulls_everywhere(omit_nulls):
    """Random magnitudes and nulls in every column (a null in an Arrow number column once broke whole rows)."""
    rng = np.random.default_rng(7)
    values = rng.standard_normal((500, 6)) * 10.0 ** rng.integers(-12, 18, (500, 6))
    values[rng.random((500, 6)) < 0.3] = np.nan
    values[rng.random((500, 6)) < 0.05] = np.inf
    values[:, 0] = np.round(values[:, 0])  # integral floats
    frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(6)])
    got = json_objects(frame, omit_nulls=omit_nulls)
    assert len(got) == 500
    assert [typed(row) if row else row for row in parsed(got)] == [
        typed(row) if row else row for row in parsed(dumped(frame, omit_nulls))]


def test_an_empty_frame_has_no_objects():
    assert json_objects(MIXED.iloc[:0]) == [] and json_objects(MIXED.iloc[:0], omit_nulls=True) == []
