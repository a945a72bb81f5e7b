"""Where decisions go: console table, Kafka topic, database, webhook alerts.

Every output is a ``Sink`` (the protocol below). The Spark job calls ``build_sinks(options)``
with the ``SinkOptions`` the command line built and, per micro-batch, ``Sinks.write(frame)``;
its progress listener calls ``Sinks.record_health(progress)``.

The delivery contract: a *durable* sink (database, Kafka topic) has every decision it was
given or the micro-batch does not end: ``Sinks.write`` retries its ``flush`` with back-off
(``RetryPolicy``) for as long as it fails, while the health record (``pipeline_health``) shows
the outage, and the runner counts the batch as done only after (``detect``: Spark commits it once it is in the
job's spool, and it leaves the spool once ``Sinks.write`` returned). Their writes are idempotent, so a retry (or
a replay after a crash) duplicates nothing. The durable sinks deliver a batch side by side, each in
a thread of its own, so that one's waits and its work outside the GIL (SQLite's statements,
librdkafka's deliveries) overlap the other's: a decision may be on the topic a moment before the
database has it, and the batch ends once both have it. A *best-effort* sink (console, webhooks) never
blocks the stream: its failure is logged with a running count and the batch goes on. Only the
database fails loudly at startup, because a bad ``--db`` is a configuration mistake.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from market_anomaly import metrics
from market_anomaly.config import redact

log = logging.getLogger(__name__)

ALERT_STATE = Path("market-anomaly") / "alert-episodes.json"  # inside detect's checkpoint (Spark ignores it)


@dataclass(frozen=True)
class SinkOptions:
    """Which sinks ``detect`` writes to, and how (built once by the command line, ``cli.detect``)."""

    db_url: str | None = None
    retention_days: float = 7.0  # ordinary decisions kept this long (market time); 0 = all (anomalies always)
    db_scores: str = "anomalies"  # whose scores the database keeps: "anomalies" or "all" (database.SCORES_KEPT)
    anomalies_topic: str | None = None
    anomalies_only: bool = False
    console: str = "auto"
    webhooks: tuple[str, ...] = ()
    webhook_format: str = "slack"
    alert_min_confidence: str = "MEDIUM"
    alert_cooldown: float = 900.0
    alert_state: Path | None = None  # where alert episodes survive a restart (detect: in its checkpoint)
    kafka_config: dict[str, str] = field(default_factory=dict)


class Sink(Protocol):
    """An output of decisions.

    ``write`` takes a micro-batch's decisions (it may deliver them or only enqueue them); ``flush``
    returns once everything written so far is delivered, or raises. A durable sink keeps what it
    could not deliver, even when ``write`` itself raised, and a later ``flush`` tries it again; a
    best-effort one may drop it.
    """

    name: str
    durable: bool

    def write(self, decisions: pd.DataFrame) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class HealthRecorder(Protocol):
    """Where the job's progress and its sinks' outages are kept (the database's ``pipeline_health``)."""

    def record_health(self, progress: dict) -> None: ...


class Stopping(RuntimeError):
    """The job is stopping while a durable sink is still failing: the batch is delivered at the next start (``detect``:
    from its spool; ``decide``: read again)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off between a failing durable sink's attempts: ``first`` seconds, doubling up to ``longest``."""

    first: float = 1.0
    longest: float = 30.0

    def delays(self):
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.longest)


class Sinks:
    """Fans each micro-batch out to every sink under the delivery contract (module docstring)."""

    def __init__(self, sinks: list[Sink], health: HealthRecorder | None = None, retry: RetryPolicy = RetryPolicy()):
        self.sinks = sinks
        self.health = health
        self.retry = retry
        self.failures = {sink.name: 0 for sink in sinks}
        self.outages: dict[str, dict[str, object]] = {}  # failing durable sinks: since, attempts, last error
        self.non_finite = 0  # values the core produced as +-inf, sent as null
        self.seconds: dict[str, float] = {}  # each sink's time in the last ``write`` (the job logs it)
        self._stopping = threading.Event()
        self._last_progress: dict = {}
        durable = sum(sink.durable for sink in sinks)  # the calling thread delivers to one of them itself
        self._beside = ThreadPoolExecutor(durable - 1, thread_name_prefix="sink") if durable > 1 else None

    def _guarded(self, sink, action: str, call) -> None:
        try:
            call()
        except Exception as error:
            self.failures[sink.name] += 1
            metrics.SINK_FAILURES.labels(sink=sink.name).inc()
            # The traceback once; a sink that stays down (say, a webhook) then costs one line per batch.
            log.error("sink %s: %s failed: %s (%d failure(s) so far); the stream continues",
                      sink.name, action, error, self.failures[sink.name], exc_info=self.failures[sink.name] == 1)

    def write(self, decisions: pd.DataFrame) -> None:
        """Best-effort sinks first (an alert goes out while the database is down), then the durable sinks side by
        side, each until it has the batch; raises ``Stopping`` when ``stop_retrying`` is called meanwhile."""
        decisions = self._finite(decisions)
        self.seconds = {}
        for sink in self.sinks:
            if not sink.durable:
                with self._timed(sink):
                    self._guarded(sink, f"writing {len(decisions)} decision(s)", lambda: (sink.write(decisions),
                                                                                         sink.flush()))
        durable = [sink for sink in self.sinks if sink.durable]
        if not durable:
            return
        beside = [self._beside.submit(self._timed_delivery, sink, decisions) for sink in durable[1:]]
        failure = None
        try:
            self._timed_delivery(durable[0], decisions)
        except Stopping as error:
            failure = error
        for delivery in beside:  # waited for even when one gave up: the batch's delivery ends as a whole
            failure = failure or delivery.exception()
        if failure is not None:
            raise failure

    def _timed_delivery(self, sink: Sink, decisions: pd.DataFrame) -> None:
        with self._timed(sink):
            self._deliver(sink, decisions)

    @contextlib.contextmanager
    def _timed(self, sink: Sink):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[sink.name] = time.perf_counter() - started

    def _deliver(self, sink: Sink, decisions: pd.DataFrame) -> None:
        delays = self.retry.delays()
        attempt = lambda: (sink.write(decisions), sink.flush())  # noqa: E731 - then flush alone: it keeps the batch
        while True:
            try:
                attempt()
                break
            except Exception as error:
                self._failed(sink, error, len(decisions))
            attempt = sink.flush
            if self._stopping.wait(next(delays)):
                raise Stopping(f"sink {sink.name} still failing at stop: {self.outages[sink.name]['error']}")
        outage = self.outages.pop(sink.name, None)
        if outage:
            log.warning("sink %s: delivered after %d attempt(s) over %.0fs", sink.name, outage["attempts"],
                        (time.time() * 1000 - outage["since"]) / 1000)
            self._report()

    def _failed(self, sink: Sink, error: Exception, count: int) -> None:
        self.failures[sink.name] += 1
        outage = self.outages.setdefault(sink.name, {"since": int(time.time() * 1000), "attempts": 0})
        outage.update(attempts=outage["attempts"] + 1, error=str(error)[:300], at=int(time.time() * 1000))
        log.error("sink %s: delivering %d decision(s) failed: %s (attempt %d); the batch waits for it",
                  sink.name, count, error, outage["attempts"], exc_info=outage["attempts"] == 1)
        self._report()

    def _report(self) -> None:
        """The outages into the health record now (the progress listener only reports finished batches)."""
        if self.health is not None:
            try:
                self.health.record_health({**self._last_progress, "sinks": self._outages(),
                                           "at": int(time.time() * 1000)})
            except Exception as error:  # the health record's own database may be the failing sink
                log.debug("health record not written: %s", error)

    def _outages(self) -> dict[str, dict[str, object]]:
        return {name: dict(outage) for name, outage in self.outages.items()}

    def _finite(self, decisions: pd.DataFrame) -> pd.DataFrame:
        """+-inf as NaN (null in every sink); the checks at the edges keep them out, so one is logged."""
        floats = decisions.select_dtypes("float").columns
        infinite = np.isinf(decisions[floats].to_numpy()) if len(floats) else np.zeros((0, 0), bool)
        if not infinite.any():
            return decisions
        self.non_finite += int(infinite.sum())
        log.warning("%d infinite value(s) in %s sent as null (%d so far)", int(infinite.sum()),
                    ", ".join(floats[infinite.any(axis=0)]), self.non_finite)
        return decisions.assign(**{name: decisions[name].where(~infinite[:, i]) for i, name in enumerate(floats)
                                   if infinite[:, i].any()})

    def stop_retrying(self) -> None:
        """A durable sink's retries give up (``Stopping``): the job is stopping."""
        self._stopping.set()

    def record_health(self, progress: dict) -> None:
        self._last_progress = {key: value for key, value in progress.items() if key not in ("sinks", "at")}
        if self.health is not None:
            try:
                self.health.record_health({**progress, "sinks": self._outages()})
            except Exception as error:
                log.error("recording health failed: %s", error)

    def close(self) -> None:
        if self._beside is not None:
            self._beside.shutdown()
        for sink in self.sinks:
            self._guarded(sink, "closing", sink.close)


def build_sinks(options: SinkOptions) -> Sinks:
    """The sinks ``options`` ask for; opens (and migrates) the database now so a bad URL fails at startup."""
    from market_anomaly.sinks.alerts import AlertSink
    from market_anomaly.sinks.console import ConsoleSink
    from market_anomaly.sinks.database import DatabaseSink, open_database
    from market_anomaly.sinks.kafka_topic import KafkaTopicSink

    sinks: list[Sink] = []
    database = None
    if options.db_url:
        retention_ms = round(options.retention_days * 86_400_000) or None
        database = DatabaseSink(open_database(options.db_url), retention_ms, options.db_scores)
        sinks.append(database)
        log.info("sink database: %s (%s; scores of %s)", redact(options.db_url),
                 f"ordinary decisions kept {options.retention_days:g} days" if retention_ms else "everything kept",
                 "every decision" if options.db_scores == "all" else "anomalies")
    if options.anomalies_topic:
        sinks.append(KafkaTopicSink(options.kafka_config, options.anomalies_topic, options.anomalies_only))
        log.info("sink kafka: topic %s%s", options.anomalies_topic, " (anomalies only)" if options.anomalies_only else "")
    if options.webhooks:
        sinks.append(AlertSink(options.webhooks, options.webhook_format, options.alert_min_confidence,
                               options.alert_cooldown, state_path=options.alert_state))
    if options.console != "off":
        sinks.append(ConsoleSink(options.console))
    return Sinks(sinks, health=database)
