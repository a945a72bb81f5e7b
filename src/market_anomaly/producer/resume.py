"""Where a restarted producer continues: each symbol's last candle already in the topic.

Candles are keyed by symbol, so each symbol lives in one partition, in order; the newest
candle of a symbol is near the end of its partition. ``last_open_times`` reads the tail of
every partition, going further back only while a wanted symbol has not been seen yet.
"""

from __future__ import annotations

import json
import logging
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from market_anomaly.kafka.topics import topic_offsets

log = logging.getLogger("market_anomaly.produce.resume")

FIRST_TAIL = 5_000          # messages per partition read first
MAX_TAIL = 2_000_000        # never further back than this per partition


def last_open_times(client_config: dict[str, str], topic: str, interval: str, wanted: set[str] | None = None,
                    timeout: float = 30.0) -> dict[str, int]:
    """Symbol -> open time of its newest ``interval`` candle in ``topic``; {} for an empty or missing topic.

    ``wanted``: stop going back once all of these are found (None: one tail per partition is enough).
    """
    try:
        offsets = {p: bounds for p, bounds in topic_offsets(client_config, topic, timeout=timeout).items()
                   if bounds[1] > bounds[0]}
    except (KafkaException, KeyError) as error:
        log.info("no resume points: topic %s not readable (%s)", topic, error)
        return {}
    latest: dict[str, int] = {}
    tail = FIRST_TAIL
    read_from = {p: high for p, (_, high) in offsets.items()}
    while True:
        ranges = {p: (max(offsets[p][0], offsets[p][1] - tail), read_from[p]) for p in offsets}
        ranges = {p: (start, end) for p, (start, end) in ranges.items() if start < end}
        if not ranges:
            break
        _read_ranges(client_config, topic, interval, ranges, latest, timeout)
        read_from.update({p: start for p, (start, _) in ranges.items()})
        if wanted is None or wanted <= set(latest) or tail >= MAX_TAIL:
            break
        tail *= 4
    return latest


def _read_ranges(client_config: dict[str, str], topic: str, interval: str, ranges: dict[int, tuple[int, int]],
                 latest: dict[str, int], timeout: float) -> None:
    consumer = Consumer({**client_config, "group.id": "market-anomaly-resume", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in ranges.items()])
        remaining = {p: end for p, (_, end) in ranges.items()}
        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                log.warning("topic %s: partitions %s not read to their end in %.0fs; resuming from what was read",
                            topic, sorted(remaining), timeout)
                return
            for message in consumer.consume(1000, 1.0):
                partition = message.partition()
                if message.error() or partition not in remaining:
                    continue
                if message.offset() >= remaining[partition] - 1:
                    del remaining[partition]
                if message.offset() >= ranges[partition][1]:
                    continue
                try:
                    candle = json.loads(message.value())
                    symbol, open_time = candle["symbol"], int(candle["open_time"])
                except (TypeError, ValueError, KeyError):
                    continue     # not a candle: the producer never wrote it, nothing to resume from
                if candle.get("interval") == interval and open_time > latest.get(symbol, -1):
                    latest[symbol] = open_time
    finally:
        consumer.close()
