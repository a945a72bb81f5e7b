"""The database's rows, built a column at a time (``decision_rows``), equal a per-decision build of them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from market_anomaly.sinks.common import DECISION_COLUMNS, to_records
from market_anomaly.sinks.database import STORED_COLUMNS, decision_rows, symbol_rows


def reference_row(record: dict[str, object]) -> tuple:
    """One decision's row from its plain values: the stored columns, then its other numbers as JSON."""
    values = {column: record.get(column) for column in DECISION_COLUMNS}
    values["reasons"] = values["reasons"] or ""
    values["confidence"] = values["confidence"] or "NONE"
    for column in ("is_anomaly", "market_event"):
        values[column] = None if values[column] is None else bool(values[column])
    values["is_anomaly"] = bool(values["is_anomaly"])
    extra = {key: value for key, value in record.items()
             if key not in DECISION_COLUMNS and isinstance(value, (int, float)) and not isinstance(value, bool)}
    values["extra"] = json.dumps(extra, sort_keys=True) if extra else None
    return tuple(values[column] for column in STORED_COLUMNS)


def comparable(row: tuple) -> tuple:
    """The row with its JSON parsed, each value with its type (1 and 1.0 differ)."""
    *stored, extra = row
    parsed = json.loads(extra) if extra else None
    return (tuple((type(value).__name__, value) for value in stored),
            parsed and {key: (type(value).__name__, value) for key, value in parsed.items()})


def batch() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame({
        "symbol": [f"S{i % 7}USDT" for i in range(n)], "interval": "1m",
        "open_time": np.arange(n, dtype="int64") // 7 * 60_000, "close_time": np.arange(n, dtype="int64") + 59_999,
        "close": rng.random(n) * 100, "return_pct": np.where(rng.random(n) < 0.2, np.nan, rng.standard_normal(n)),
        "votes": rng.integers(0, 4, n), "is_anomaly": rng.random(n) < 0.1,
        "confidence": rng.choice(["NONE", "LOW", "HIGH", None, ""], n),
        "reasons": rng.choice(["", "Z-SCORE 7.2σ | \"VOLUME\" 14x", None], n),
        "market_event": pd.Series(rng.choice([True, False, None], n), dtype=object),
        "window_mean": np.where(rng.random(n) < 0.3, np.nan, np.round(rng.standard_normal(n), 1)),
        "surprise": np.where(rng.random(n) < 0.5, np.nan, rng.random(n)), "note": "text is not stored",
        "trades": rng.integers(0, 10, n), "flag": rng.random(n) < 0.5,
    })
    return frame  # open, high, low, volume, ... absent: stored as null


def test_rows_equal_the_per_decision_build():
    frame = batch()
    assert [comparable(row) for row in decision_rows(frame)] == [
        comparable(reference_row(record)) for record in to_records(frame)]


def test_a_key_given_twice_keeps_its_last_decision():
    frame = batch().iloc[:5]
    again = frame.iloc[[0]].assign(close=1.5, window_mean=np.nan)
    rows = decision_rows(pd.concat([frame, again], ignore_index=True))
    closes = {row[:3]: (row[STORED_COLUMNS.index("close")], row[-1]) for row in rows}
    assert len(rows) == 5 and closes[tuple(frame.iloc[0][["symbol", "interval", "open_time"]])][0] == 1.5
    newest = {row[0]: row[2] for row in symbol_rows(rows)}
    assert newest == frame.groupby("symbol")["open_time"].max().to_dict()


def test_with_the_anomalies_scores_only_an_ordinary_decision_keeps_none():
    frame = batch()
    everything, anomalies_only = decision_rows(frame), decision_rows(frame, scores="anomalies")
    anomaly = frame["is_anomaly"].to_numpy()
    assert 0 < anomaly.sum() < len(frame)
    assert [row[:-1] for row in anomalies_only] == [row[:-1] for row in everything]  # the named columns alike
    assert [row[-1] for row in anomalies_only] == [row[-1] if flagged else None
                                                   for row, flagged in zip(everything, anomaly)]
    assert any(row[-1] for row, flagged in zip(anomalies_only, anomaly) if flagged)
