"""The market-wide mark across the members of a decide group: each member's symbols per minute, shared on a topic.

A member decides only its partitions' symbols, so on its own it would judge a market-wide minute on part of the
market. Each member publishes, per batch and minute, the symbols it decided and those of them anomalous
(``MarketTally.minute_counts``) to the market topic (``--market-topic``, one partition, keyed by the minute), and
reads the topic in a thread of its own, from the counts shared in the last ``keep_minutes`` minutes before it started
(the span its tally keeps), so that a member started or restarted late judges a minute begun before it on the whole
market too (a restarted member's own counts from before included: its checkpoint may fall inside a minute). The
other members' counts go into its tally (``BatchHandler.merge_minute``); the corrections its own anomalies then
need (marked market-wide now, or no longer) go to the sinks with its next batch. Counts are sets of symbols: a member reading its own
counts back, or one message twice, changes nothing.

The topic carries counts, not decisions: losing it costs marks (each member then judges by its own symbols),
never a decision, so it is produced asynchronously and no batch waits for it; one partition, created with the
cluster's default replication (``default.replication.factor``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import pandas as pd

log = logging.getLogger("market_anomaly.decide")

POLL_SECONDS = 0.2
# The decider's consumer settings this reader shares, so that a member's -X for its group (a shorter
# max.poll.interval.ms, say) is valid here too; -X wins.
SESSION_TIMEOUT_MS = 10_000  # a crashed member's partitions wait this long for a new owner (Kafka's default: 45 s)


class SharedTally:
    """Publishes this member's minute counts and merges the others' into ``handler``'s tally."""

    def __init__(self, kafka_config: dict[str, str], topic: str, handler, candles_topic: str,
                 member: str | None = None):
        self.kafka_config = kafka_config
        self.topic = topic
        self.candles_topic = candles_topic  # counts of another candle topic's market (a pipeline beside) are not ours
        self.handler = handler
        self.member = member or uuid.uuid4().hex  # this process's counts, recognised when they come back
        self.producer = self.consumer = self.thread = None
        self.stopping = threading.Event()
        self.merged = 0  # counts taken in: other members', and this member's former run's
        self.shared_before = 0  # the topic's end when this member started: its own counts before it are a former run's

    def start(self) -> "SharedTally":
        from confluent_kafka import Consumer, Producer

        from market_anomaly.kafka.topics import ensure_topics

        reading = {"session.timeout.ms": SESSION_TIMEOUT_MS, **self.kafka_config}
        ensure_topics(reading, {self.topic: 1}, replication_factor=-1)  # -1: the cluster's default; the check reads it
        self.producer = Producer({**self.kafka_config, "linger.ms": 5, "compression.type": "lz4"})
        self.consumer = Consumer({**reading, "group.id": f"market-tally-{self.member}", "enable.auto.commit": False})
        start_at, self.shared_before = self._recent_counts()
        self.consumer.assign([start_at])
        self.thread = threading.Thread(target=self._read, name="market-tally", daemon=True)
        self.thread.start()
        log.info("decide: market-wide counts shared on %s as member %s", self.topic, self.member)
        return self

    def _recent_counts(self):
        """(where the counts of the span the tally keeps begin, by when they were shared; the topic's end now). The
        end, and nothing before it, when there are none or the broker cannot say: the counts are best effort, a
        member without them judges by its own symbols."""
        from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

        minutes = self.handler.tally.keep_minutes
        since_ms = 0 if minutes is None else int((time.time() - minutes * 60) * 1000)
        try:
            found = self.consumer.offsets_for_times([TopicPartition(self.topic, 0, since_ms)], timeout=10)[0].offset
            end = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=10)[1]
        except KafkaException as error:
            log.warning("decide: market topic %s: earlier counts not found (%s); reading from now on", self.topic,
                        error)
            found, end = -1, 0
        return TopicPartition(self.topic, 0, found if found >= 0 else OFFSET_END), end

    def publish(self, decisions: pd.DataFrame) -> None:
        """This batch's symbols per minute, to the other members (asynchronous; a full queue drops counts)."""
        for interval, open_time, decided, anomalous in self.handler.tally.minute_counts(decisions):
            value = json.dumps({"candles": self.candles_topic, "member": self.member, "interval": interval,
                                "open_time": open_time, "decided": decided, "anomalous": anomalous}).encode()
            try:
                self.producer.produce(self.topic, value, key=f"{interval}:{open_time}")
            except BufferError:
                log.warning("decide: market counts of %s %s not shared (producer queue full)", interval, open_time)
        self.producer.poll(0)

    def _read(self) -> None:
        while not self.stopping.is_set():
            message = self.consumer.poll(POLL_SECONDS)
            if message is None:
                continue
            if message.error():
                log.warning("decide: market topic %s: %s", self.topic, message.error())
                continue
            try:
                counts = json.loads(message.value())
                if counts["candles"] != self.candles_topic:
                    continue
                if counts["member"] == self.member and message.offset() >= self.shared_before:
                    continue  # this run's own counts, in its tally already
                self.handler.merge_minute(str(counts["interval"]), int(counts["open_time"]),
                                          [str(symbol) for symbol in counts["decided"]],
                                          [str(symbol) for symbol in counts["anomalous"]])
                self.merged += 1
            except (ValueError, KeyError, TypeError) as error:
                log.warning("decide: market topic %s offset %d: not a member's counts (%s)", self.topic,
                            message.offset(), error)

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
            log.info("decide: %d minute counts taken from other members", self.merged)
        if self.consumer is not None:
            self.consumer.close()
        if self.producer is not None:
            self.producer.flush(5)
