"""The stream's hand-over to the sinks, beside its next micro-batch, with nothing lost.

Spark runs a micro-batch's stages and then its ``foreachBatch``; a batch's sinks written inside it (about a quarter
of a catch-up batch: 0.8-1.0 s of 3.6-3.9 s at 50,000 candles) leave the executors idle meanwhile, and two workers
then decide no faster than one. So ``foreachBatch`` (``SpooledHandOver``) collects and marks the batch, and writes it
to a spool in the checkpoint (``Spool``: Arrow files, each written whole and fsynced, then renamed) while a thread of
its own delivers it; once it is spooled, Spark commits the batch and runs the next one while the sinks deliver this
one. The next ``foreachBatch`` waits for that delivery before it hands over its own (one batch in the sinks at most),
and a batch leaves the spool once the sinks have it. The delivery contract stays whole: a batch that Spark committed
and the sinks do not have yet is in the spool, and the next start delivers what the spool holds before any new batch
(a crash before the batch is spooled, or before Spark's commit, replays it; the durable sinks are idempotent).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from market_anomaly.files import write_atomically

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("market_anomaly.detect")

SPOOL = Path("market-anomaly") / "spool"  # inside detect's checkpoint (Spark ignores it)
COUNTS = ("batch_id", "candles", "anomalies", "corrections", "detection_seconds")
_SPOOLED: Future = Future()  # what a batch read from the spool waits for before it leaves it
_SPOOLED.set_result(None)


@dataclass
class HandOver:
    """A batch ready for the sinks: its decisions with their market-wide marks (``given``: the batch's own
    ``candles`` rows, then the corrections of earlier anomalies), its rejects, and what its progress line counts."""

    batch_id: int
    given: pd.DataFrame
    rejected: pd.DataFrame  # symbol, error, raw
    candles: int
    anomalies: int
    corrections: int
    detection_seconds: float


class Spool:
    """Batches handed over and perhaps not delivered yet: per batch, ``rejected`` and then ``given`` as Arrow IPC
    files, each written atomically and durably (``files.write_atomically``); the batch's counts ride in the
    ``given`` file's metadata, and that file, written last, is what makes the batch count as spooled."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # A crash while spooling (a temporary file, or a rejects file without its batch's given one): Spark had not
        # committed that batch, so it is replayed and spooled again.
        for unfinished in [*self.directory.glob(".*.tmp"), *self.directory.glob("*.rejected.arrow")]:
            if unfinished.suffix == ".tmp" or not self._path(_batch_id(unfinished), "given").exists():
                unfinished.unlink()

    def put(self, batch: HandOver) -> None:
        import pyarrow as pa

        counts = json.dumps({name: getattr(batch, name) for name in COUNTS}).encode()
        for name, frame in (("rejected", batch.rejected), ("given", batch.given)):
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if name == "given":
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"market_anomaly": counts})
            write_atomically(self._path(batch.batch_id, name), lambda file: _write_table(file, table), durable=True)

    def pending(self) -> list[HandOver]:
        """What a former run spooled and its sinks may not have, oldest first."""
        import pyarrow as pa

        batches = []
        for given in sorted(self.directory.glob("*.given.arrow")):
            table = pa.ipc.open_file(given).read_all()
            rejected = pa.ipc.open_file(self._path(_batch_id(given), "rejected")).read_all()
            batches.append(HandOver(given=table.to_pandas(), rejected=rejected.to_pandas(),
                                    **json.loads(table.schema.metadata[b"market_anomaly"])))
        return batches

    def remove(self, batch_id: int) -> None:
        for name in ("given", "rejected"):  # given first: the batch is no longer spooled once it is gone
            self._path(batch_id, name).unlink(missing_ok=True)

    def _path(self, batch_id: int, name: str) -> Path:
        return self.directory / f"{batch_id:012d}.{name}.arrow"


def _batch_id(path: Path) -> int:
    return int(path.name.split(".")[0])


def _write_table(file, table) -> None:
    import pyarrow as pa

    with pa.ipc.new_file(file, table.schema) as writer:
        writer.write_table(table)


class SpooledHandOver:
    """``foreachBatch``: collect the batch, mark it (``BatchHandler.prepare``), and deliver it
    (``BatchHandler.deliver``) in a thread of its own while it is spooled and while Spark goes on (module
    docstring)."""

    def __init__(self, handler, spool: Spool, reject_columns: tuple[str, ...]):
        self.handler = handler
        self.spool = spool
        self.reject_columns = list(reject_columns)  # the stream's columns for rejects (``error`` marks one)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-sinks")
        self.in_sinks: Future | None = None
        leftover = spool.pending()
        if leftover:
            log.info("detect: delivering %d batch(es) a former run committed before its sinks had them (spool %s)",
                     len(leftover), spool.directory)
            self.in_sinks = self.thread.submit(self._deliver_all, [(batch, _SPOOLED) for batch in leftover])

    def __call__(self, batch_df, batch_id: int) -> None:
        started = time.monotonic()
        frame = batch_df.toPandas()  # runs the micro-batch: Kafka read, parsing, the per-symbol detection
        detection_seconds = time.monotonic() - started
        self.settle()  # the batch before is delivered: one in the sinks at most, and in order
        if frame.empty:
            return
        failed = frame["error"].notna()
        batch = self.handler.prepare(frame[~failed].drop(columns=self.reject_columns),
                                     frame[failed][["symbol", *self.reject_columns]], batch_id, detection_seconds)
        del frame, failed  # not held while the batch is spooled
        # The delivery starts while the batch is spooled (a burst's decisions do not wait for the spool's fsyncs);
        # Spark commits the batch only once this returns, with the batch spooled.
        spooled: Future = Future()
        self.in_sinks = self.thread.submit(self._deliver_all, [(batch, spooled)])
        try:
            self.spool.put(batch)
        except BaseException as error:
            spooled.set_exception(error)
            raise
        spooled.set_result(None)

    def _deliver_all(self, batches: list[tuple[HandOver, Future]]) -> None:
        for batch, spooled in batches:
            self.handler.deliver(batch)
            if spooled.exception() is None:  # (waits for the spool) a batch not spooled is replayed by Spark
                self.spool.remove(batch.batch_id)

    def settle(self) -> None:
        """Wait until the sinks have the batch handed to them; raises what its delivery raised (``Stopping``: the
        job stops with it in the spool)."""
        if self.in_sinks is not None:
            handing, self.in_sinks = self.in_sinks, None
            handing.result()

    def close(self) -> None:
        """After the query stopped: the last batch's delivery, then the thread."""
        from market_anomaly.sinks import Stopping

        try:
            self.settle()
        except Stopping as error:
            log.warning("detect: stopped while a durable sink was failing (%s); the spool keeps the batch for the "
                        "next start", error)
        finally:
            self.thread.shutdown()
