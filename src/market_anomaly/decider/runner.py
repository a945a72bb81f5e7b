"""The decider: a long-lived Kafka consumer-group member that decides candles as soon as they arrive.

A Spark micro-batch through a stateful Python operator costs 0.65-0.9 s before any work is done, and
Spark's real-time mode cannot run Python operators (docs/ARCHITECTURE.md), so the Spark stream cannot
decide a minute's burst within a second. The decider runs the same parts without micro-batches:

    poll (whatever has arrived, up to ``max_poll_records``) -> per partition: ``candles.topic.parse_values``
    (the stream's checks and reasons) -> ``spark.workers.decide_bucket`` with the partition's states in
    memory (the stream's bounded per-bucket step) -> ``spark.job.BatchHandler.hand_over`` (dead letters,
    the market-wide mark, the same ``Sinks``, which return once the durable ones have the decisions)

The hand-over runs in a thread of its own while the next poll is read and decided (the sinks' waits
and their work outside the GIL overlap it); one batch at most is in the sinks, and its offsets count
only once they have it.

``crypto-candles`` is keyed by symbol, so a partition holds a fixed set of symbols in their order, and
a partition is what the group assigns: its states are one bucket. Every ``checkpoint_every`` seconds,
and when a partition is revoked or the decider stops, each partition's states are written with the
offset they cover (``checkpoint``) and only then is that offset committed. A restarted member, or one
that takes a partition over, loads the file and reads on from its offset; a partition without a file
starts at ``--starting-offsets``.

The market-wide mark counts each minute's symbols over every poll (``core.consensus.MarketTally``; an
anomaly whose mark a later poll changes is sent again, corrected), and over the other members' symbols, which
each member shares on the market topic (``decider.market``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from market_anomaly import metrics
from market_anomaly.candles.topic import parse_values
from market_anomaly.candles.validation import Limits, interval_name
from market_anomaly.core.engine import empty_decisions
from market_anomaly.decider import checkpoint
from market_anomaly.decider.market import SESSION_TIMEOUT_MS, SharedTally
from market_anomaly.lifecycle import Started, on_stop_signals
from market_anomaly.sinks import Stopping
from market_anomaly.sinks.common import CANDLE_COLUMNS
from market_anomaly.spark.job import BatchHandler, DetectConfig
from market_anomaly.spark.workers import StateBounds, SymbolState, decide_bucket, params_for

log = logging.getLogger("market_anomaly.decide")

REJECT_COLUMNS = ("error", "raw")
NO_REJECTS = pd.DataFrame({"symbol": [], "error": [], "raw": []}, dtype=object)


@dataclass(frozen=True)
class DecideConfig:
    """The decider's settings: the stream's (``DetectConfig``; its Spark-only fields are not used) and its own."""

    stream: DetectConfig
    group_id: str = "market-anomaly-decide"
    member: str | None = None  # static group membership (group.instance.id)
    max_poll_records: int = 50_000  # most records one poll decides, so a backlog is read in bounded pieces
    checkpoint_every: float = 5.0  # seconds between state checkpoints (and offset commits)
    market_topic: str | None = "crypto-market-tally"  # the members' minute counts (``decider.market``); None: none


class Decider(Started):
    """The running decider and what it owns: the consumer, the sinks, the dead-letter publisher, the states.

    ``Decider(config)`` checks the parameter file; ``start()`` builds the rest and subscribes; ``run()``
    decides until a signal, ``run_for`` or a failure; ``close()`` checkpoints and releases everything. As a
    context manager, ``with Decider(config) as decider:`` starts it and always closes it.
    """

    def __init__(self, config: DecideConfig):
        self.config = config
        stream = config.stream
        self.params_path = str(Path(stream.params).resolve())
        self.interval = interval_name(params_for(self.params_path).interval_ms)  # fails fast on a bad file
        self.directory = Path(stream.checkpoint_dir) / "partitions"
        self.limits = Limits(interval=self.interval, symbols=frozenset(stream.symbols) if stream.symbols else None)
        self.states: dict[int, dict[str, SymbolState]] = {}  # per assigned partition
        self.positions: dict[int, int] = {}  # per assigned partition: the next offset, all before it in the sinks
        self.saved: dict[int, int] = {}  # per assigned partition: the offset its checkpoint file covers
        self.bounds: StateBounds | None = None  # --max-symbols over the topic's partitions, known at start
        self.consumer = self.sinks = self.dead_letters = self.handler = self.shared = None
        self.batches = 0
        # The sinks write a batch in a thread of their own while the next one is read and decided (their waits,
        # SQLite's and librdkafka's work run without the GIL); (the hand-over, offsets it covers, records read).
        self.sinks_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decide-sinks")
        self.in_sinks: tuple[Future, dict[int, int], int] | None = None
        self.read_since_report, self.reported_at, self.last_batch_seconds = 0, time.monotonic(), 0.0
        self.stopping = threading.Event()
        self.consistent = True  # False while (or once, when it failed) a batch's states are ahead of the sinks

    def start(self) -> "Decider":
        from confluent_kafka import Consumer

        from market_anomaly.kafka.dead_letter import DeadLetterPublisher
        from market_anomaly.sinks import build_sinks

        stream = self.config.stream
        self.sinks = build_sinks(stream.sinks)
        self.dead_letters = DeadLetterPublisher(stream.kafka, stream.dead_letter_topic, stage="consumer")
        self.handler = BatchHandler(self.sinks, self.dead_letters, self.params_path)
        if self.config.market_topic:
            self.shared = self.handler.shared = SharedTally(stream.kafka, self.config.market_topic, self.handler,
                                                            stream.topic, self.config.member).start()
        self.consumer = Consumer({
            "group.id": self.config.group_id, "auto.offset.reset": stream.starting_offsets,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            **({"group.instance.id": self.config.member} if self.config.member else {}),
            **stream.kafka,
            "enable.auto.commit": False,  # offsets move only with a checkpoint
            "enable.auto.offset.store": False,
        })
        partitions = self.consumer.list_topics(stream.topic, timeout=30).topics[stream.topic].partitions
        # --max-symbols spread over the topic's partitions, as the stream spreads it over its state buckets.
        self.bounds = StateBounds.spread(stream.symbol_expiry, stream.max_symbols, max(1, len(partitions)))
        self.consumer.subscribe([stream.topic], on_assign=self._assigned, on_revoke=self._revoked,
                                on_lost=self._lost)
        log.info("decide: reading %s from %s as group %s; checkpoint %s; params %s", stream.topic,
                 stream.kafka.get("bootstrap.servers"), self.config.group_id, self.directory, self.params_path)
        return self

    # -- the partitions the group gives and takes ------------------------------------------------

    def _assigned(self, consumer, partitions) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        self._settle()  # the batch in the sinks counts for the partitions it read
        for assigned in partitions:
            saved = checkpoint.load(self.directory, assigned.topic, assigned.partition)
            if saved is None:
                assigned.offset = OFFSET_BEGINNING if self.config.stream.starting_offsets == "earliest" else OFFSET_END
                self.states[assigned.partition] = {}
            else:
                assigned.offset, self.states[assigned.partition] = saved
                self.positions[assigned.partition] = self.saved[assigned.partition] = assigned.offset
        consumer.assign(partitions)
        log.info("decide: assigned partitions %s (%d symbols' states restored)",
                 sorted(p.partition for p in partitions), sum(len(self.states[p.partition]) for p in partitions))

    def _revoked(self, consumer, partitions) -> None:
        self.checkpoint([p.partition for p in partitions])
        self._forget(partitions)

    def _lost(self, consumer, partitions) -> None:
        self._settle()
        # Another member may own them already: its checkpoint is the one that counts, so none is written.
        log.warning("decide: lost partitions %s; the next owner resumes from their last checkpoint",
                    sorted(p.partition for p in partitions))
        self._forget(partitions)

    def _forget(self, partitions) -> None:
        for lost in partitions:
            for table in (self.states, self.positions, self.saved):
                table.pop(lost.partition, None)

    # -- deciding ---------------------------------------------------------------------------------

    def poll(self, timeout: float) -> int:
        """Decide what has arrived (waiting at most ``timeout`` seconds for the first record) and hand it to the
        sinks once they have the batch before; the number of records read."""
        first = self.consumer.poll(timeout)
        if first is None:
            self._settle()
            if self.handler.late_corrections:  # other members' counts re-marked anomalies of ours: out now
                self.in_sinks = (self.sinks_thread.submit(self._hand_over, empty_decisions(CANDLE_COLUMNS), NO_REJECTS,
                                                          self.batches, 0.0, time.monotonic()), {}, 0)
            return 0
        more = self.config.max_poll_records - 1
        messages = [first, *(self.consumer.consume(more, 0) if more else [])]
        started = time.monotonic()
        by_partition: dict[int, list] = {}
        for message in messages:
            if message.error() is not None:
                log.warning("decide: consumer error: %s", message.error())
                continue
            by_partition.setdefault(message.partition(), []).append(message)
        decided, rejected, read_up_to = [], [], {}
        self.consistent = False  # the states move ahead of the sinks until this batch is handed over
        for partition, records in by_partition.items():
            if partition not in self.states:  # revoked by a rebalance inside this poll
                continue
            decisions, refused = self._decide(partition, records)
            decided += [decisions] if decisions is not None else []
            rejected += [refused] if refused is not None else []
            read_up_to[partition] = records[-1].offset() + 1
        detection_seconds = time.monotonic() - started
        self._settle()
        if read_up_to:
            decisions = pd.concat(decided, ignore_index=True) if decided else empty_decisions(CANDLE_COLUMNS)
            rejects = pd.concat(rejected, ignore_index=True) if rejected else NO_REJECTS
            handing = self.sinks_thread.submit(self._hand_over, decisions, rejects, self.batches,
                                               detection_seconds, started)
            self.in_sinks = (handing, read_up_to, len(messages))
        self.consistent = True  # a failed hand-over, found by ``_settle``, clears it for good
        return len(messages)

    def _hand_over(self, decisions, rejected, batch_id: int, detection_seconds: float, started: float) -> float:
        """In the sinks' thread: the batch to the sinks; returns, once they have it, the seconds since its
        deciding started."""
        self.handler.hand_over(decisions, rejected, batch_id, detection_seconds)
        return time.monotonic() - started

    def _settle(self) -> None:
        """Wait until the sinks have the batch handed to them (if any); only then do its offsets count as decided
        (and may be checkpointed). Raises what the hand-over raised."""
        if self.in_sinks is None:
            return
        (handing, read_up_to, read), self.in_sinks = self.in_sinks, None
        try:
            self.last_batch_seconds = handing.result()
        except BaseException:
            self.consistent = False
            raise
        # Every partition it read is still assigned: the rebalance callbacks settle before they forget one.
        self.positions.update(read_up_to)
        self.batches += 1
        self.read_since_report += read
        metrics.record_batch(self.last_batch_seconds, read)

    def _decide(self, partition: int, records):
        """One partition's records: (its decisions or None, its rejects or None)."""
        recorded = [_recorded_ms(record) for record in records]
        parsed = parse_values([record.value() for record in records], recorded, self.limits,
                              check_present=not self.config.stream.accept_future_candles)
        valid = parsed["error"].isna().to_numpy()
        decisions, refused = None, None
        if valid.any():
            candles = parsed[valid].drop(columns=list(REJECT_COLUMNS)).reset_index(drop=True)
            candles["open_time"] = candles["open_time"].astype(np.int64)
            decisions, refused = decide_bucket(candles, self.states[partition], self.params_path, self.bounds,
                                               ("partition", partition))
        rejects = [frame for frame in (parsed[~valid], refused) if frame is not None and len(frame)]
        return decisions, pd.concat(rejects, ignore_index=True) if rejects else None

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint(self, partitions=None) -> None:
        """Write the states of ``partitions`` (default: every assigned one) that moved since their last file,
        then commit their offsets, once the sinks have the batch handed to them; nothing when a batch failed
        half-way (the last files stand)."""
        from confluent_kafka import KafkaException, TopicPartition

        self._settle()
        if not self.consistent:
            return
        topic = self.config.stream.topic
        moved = [p for p in (self.states if partitions is None else partitions)
                 if p in self.positions and self.positions[p] != self.saved.get(p)]
        for partition in moved:
            checkpoint.save(self.directory, topic, partition, self.positions[partition], self.states[partition])
            self.saved[partition] = self.positions[partition]
        if moved:
            try:
                self.consumer.commit(offsets=[TopicPartition(topic, p, self.positions[p]) for p in moved],
                                     asynchronous=False)
            except KafkaException as error:  # the files are what a restart reads; the group's offsets are for lag
                log.warning("decide: committing offsets failed (%s); the checkpoint files stand", error)
        self._report(topic)

    def _report(self, topic: str) -> None:
        from confluent_kafka import TopicPartition

        lag, partitions = {}, {}
        for partition, position in self.positions.items():
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high is not None and high >= 0:
                lag[topic, partition] = high - position
            partitions[f"{topic}:{partition}"] = {"end_offset": position}
        state_bytes = sum(len(symbol) + len(state.blob) + 16 for states in self.states.values()
                          for symbol, state in states.items())
        metrics.record_position(state_bytes, lag)
        now = time.monotonic()
        read, self.read_since_report = self.read_since_report, 0
        self.sinks.record_health({
            "batch_id": self.batches, "input_rows": read, "partitions": partitions, "at": int(time.time() * 1000),
            "processed_rows_per_second": read / max(now - self.reported_at, 1e-3),
            "batch_duration_ms": round(self.last_batch_seconds * 1000)})
        self.reported_at = now

    # -- running ----------------------------------------------------------------------------------

    def run(self) -> bool:
        """Decide until a signal (SIGINT, SIGTERM), ``run_for`` seconds or a failure; False on a failure."""
        on_stop_signals(self.stop)
        run_for = self.config.stream.run_for
        deadline = time.monotonic() + run_for if run_for else None
        every = self.config.checkpoint_every
        due = time.monotonic() + every
        try:
            while not self.stopping.is_set() and (deadline is None or time.monotonic() < deadline):
                read = self.poll(timeout=0.2)
                # When due and nothing waits (a burst is decided first), or at twice the interval under a backlog.
                now = time.monotonic()
                if now >= due + every or (now >= due and not read):
                    self.checkpoint()
                    due = time.monotonic() + every
        except Stopping:
            log.warning("decide: stopped while a durable sink was failing; its batch is read again at the next start")
        except Exception:
            log.exception("decide: failed")
            self.stop()  # a sink failing meanwhile gives up its batch, so that closing does not wait for it
            return False
        log.info("decide: stopping (totals %s)", self.handler.totals)
        return True

    def stop(self) -> None:
        """From a signal handler or another thread: finish the running batch, then stop."""
        self.stopping.set()
        if self.sinks is not None:
            self.sinks.stop_retrying()

    def close(self) -> None:
        # Kafka's client can wait without end to leave a group or commit when the brokers are gone; by now every
        # decided batch is in the sinks and every checkpoint file is whole, so past the grace it exits.
        watchdog = threading.Timer(CLOSE_GRACE_SECONDS, _exit_stuck)
        watchdog.daemon = True
        watchdog.start()
        try:
            if self.consumer is not None:
                try:
                    self.checkpoint()
                except Exception as error:  # noqa: BLE001 - the batch in the sinks failed: it is read again
                    log.warning("decide: the last batch did not reach the sinks (%s); the next start reads it again",
                                error)
                # Leaves the group, its partitions going to the others at once; a named (static) member's wait for
                # the session timeout instead, so that it takes them back when it restarts.
                self.consumer.close()
            self.sinks_thread.shutdown()
            if self.shared is not None:
                self.shared.close()
            if self.sinks is not None:
                self.sinks.close()
            if self.dead_letters is not None:
                self.dead_letters.flush()
        finally:
            watchdog.cancel()
        self.consumer = self.sinks = self.dead_letters = self.shared = None


CLOSE_GRACE_SECONDS = 30.0  # `up` gives its runner 60 s after SIGTERM


def _exit_stuck() -> None:
    log.error("decide: closing took longer than %.0f s (the Kafka cluster unreachable?); exiting anyway: the next "
              "start reads on from the checkpoint files", CLOSE_GRACE_SECONDS)
    logging.shutdown()
    os._exit(1)


def _recorded_ms(record) -> int | None:
    kind, at = record.timestamp()
    return None if kind == 0 else at  # 0: TIMESTAMP_NOT_AVAILABLE


def run(config: DecideConfig) -> int:
    """Run the decider; 0 when it stopped cleanly, 1 on a failure, 2 when the parameter file is unusable."""
    from market_anomaly.core import InvalidParams

    try:
        decider = Decider(config)
    except (InvalidParams, ValueError) as error:
        log.error("%s", error)
        return 2
    with decider:
        return 0 if decider.run() else 1
