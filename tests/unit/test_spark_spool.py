"""The stream's spool (``spark.handover.Spool``): what Spark committed before the sinks had it, kept whole."""

from __future__ import annotations

import pandas as pd

from market_anomaly.spark.handover import HandOver, Spool


def batch(batch_id: int) -> HandOver:
    given = pd.DataFrame({"symbol": ["BTCUSDT", "ETHUSDT", "BTCUSDT"], "open_time": [60_000, 60_000, 0],
                          "close": [1.5, 2.5, float("nan")], "is_anomaly": [True, False, True],
                          "reasons": ["Z-SCORE 9σ", None, "Z-SCORE 9σ | MARKET 2/2"], "decided_at": 7})
    rejected = pd.DataFrame({"symbol": [None], "error": ["not a JSON object"], "raw": ["[1, 2]"]})
    return HandOver(batch_id, given, rejected, candles=2, anomalies=1, corrections=1, detection_seconds=0.25)


def test_a_spooled_batch_comes_back_as_it_went_in_and_in_batch_order(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.put(batch(11))
    spool.put(batch(9))
    back = Spool(tmp_path / "spool").pending()  # a restart
    assert [found.batch_id for found in back] == [9, 11]
    expected = batch(11)
    pd.testing.assert_frame_equal(back[1].given, expected.given)
    pd.testing.assert_frame_equal(back[1].rejected, expected.rejected)
    assert (back[1].candles, back[1].anomalies, back[1].corrections, back[1].detection_seconds) == (2, 1, 1, 0.25)


def test_a_delivered_batch_leaves_the_spool_and_an_unfinished_one_is_dropped_at_start(tmp_path):
    spool = Spool(tmp_path)
    spool.put(batch(3))
    spool.put(batch(3))  # a replayed batch spooled again: one copy
    (tmp_path / ".000000000004.given.arrow.tmp").write_bytes(b"half")  # killed while spooling batch 4, and
    (tmp_path / "000000000005.rejected.arrow").write_bytes(b"")  # between batch 5's files: Spark committed neither
    assert [found.batch_id for found in Spool(tmp_path).pending()] == [3]
    assert not (tmp_path / ".000000000004.given.arrow.tmp").exists()
    assert not (tmp_path / "000000000005.rejected.arrow").exists()
    spool.remove(3)
    assert spool.pending() == []
