"""The stream's spool (``spark.handover.Spool``): what Spark committed before the sinks had it, kept whole."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from market_anomaly.spark.handover import HandOver, Spool, SpooledHandOver


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


class Collected:
    """What ``foreachBatch`` is given: a frame the stream's columns (``error``, ``raw`` for rejects) shaped."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def toPandas(self) -> pd.DataFrame:  # noqa: N802 (Spark's name)
        return self.frame


class RecordingHandler:
    """Records the batches delivered; a delivery waits for ``release`` (set from the start unless ``held``)."""

    def __init__(self, held: bool = False):
        self.delivering = threading.Event()
        self.release = threading.Event()
        if not held:
            self.release.set()
        self.delivered: list[int] = []

    def prepare(self, decisions, rejected, batch_id, detection_seconds) -> HandOver:
        return HandOver(batch_id, decisions.reset_index(drop=True), rejected.reset_index(drop=True),
                        candles=len(decisions), anomalies=0, corrections=0, detection_seconds=detection_seconds)

    def deliver(self, batch: HandOver) -> None:
        self.delivering.set()
        assert self.release.wait(timeout=10)
        self.delivered.append(batch.batch_id)


def stream_batch() -> Collected:
    return Collected(pd.DataFrame({"symbol": ["BTCUSDT", "ETHUSDT"], "open_time": [0, 0], "close": [1.5, 2.5],
                                   "error": [None, "close is not a number"], "raw": [None, '{"c": "x"}']}))


def test_a_batch_is_delivered_while_it_is_spooled_and_leaves_the_spool_after_both(tmp_path):
    handler = RecordingHandler(held=True)

    class SlowSpool(Spool):
        def put(self, batch):
            # With the delivery after the spool's writes this would wait its whole timeout and fail.
            assert handler.delivering.wait(timeout=10), "the delivery waited for the spool"
            super().put(batch)

    spool = SlowSpool(tmp_path)
    hand_over = SpooledHandOver(handler, spool, ("error", "raw"))
    hand_over(stream_batch(), 4)
    assert [found.batch_id for found in spool.pending()] == [4]  # spooled when Spark commits it, still delivering
    handler.release.set()
    hand_over.close()
    assert handler.delivered == [4]
    assert spool.pending() == []


def test_a_batch_that_could_not_be_spooled_fails_the_micro_batch_and_leaves_nothing_in_the_spool(tmp_path):
    handler = RecordingHandler()

    class FullDisk(Spool):
        def put(self, batch):
            raise OSError(28, "No space left on device")

    spool = FullDisk(tmp_path)
    hand_over = SpooledHandOver(handler, spool, ("error", "raw"))
    with pytest.raises(OSError, match="No space"):
        hand_over(stream_batch(), 5)  # Spark does not commit it: it replays
    hand_over.close()
    assert handler.delivered == [5] and spool.pending() == []
