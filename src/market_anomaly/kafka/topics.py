"""Topic administration and the readiness check every command runs before using Kafka."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from market_anomaly import config

log = logging.getLogger(__name__)

# The project's topics and their partition counts: candles are keyed by symbol, so
# partitions bound the consumer's parallelism.
DEFAULT_TOPICS = {
    config.CANDLES_TOPIC: 4,
    config.DEAD_LETTER_TOPIC: 1,
    config.ANOMALIES_TOPIC: 4,
}


# Topic creation is tried again on errors that pass (see ``_transient``), this many times in all.
CREATE_ATTEMPTS = 4
_TRANSIENT_CODES = {KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                    KafkaError._ALL_BROKERS_DOWN, KafkaError.NOT_CONTROLLER}


class KafkaUnavailable(RuntimeError):
    pass


# librdkafka logs every refused connection while a broker boots; the readiness loop
# reports the outcome itself, so those lines go to a silenced logger.
_probe_logger = logging.getLogger("market_anomaly.kafka.probe")
_probe_logger.setLevel(logging.CRITICAL)


def replication_settings(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``: three copies where
    possible, and ``acks=all`` writes go on while one replica is down."""
    replication_factor = min(3, brokers)
    return replication_factor, max(1, replication_factor - 1)


def wait_until_ready(client_config: dict[str, str], timeout: float = 60.0, brokers: int = 1) -> AdminClient:
    """Return an admin client once a metadata request succeeds (the broker answers and has a controller)
    and names at least ``brokers`` brokers."""
    admin = AdminClient({**client_config, "logger": _probe_logger})
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=2)
            if len(metadata.brokers) >= brokers:
                return admin
        except KafkaException as error:
            last_error = error
        time.sleep(0.25)
    raise KafkaUnavailable(
        f"no Kafka broker answered at {client_config.get('bootstrap.servers')} within {timeout:.0f}s"
        + (f" (last error: {last_error})" if last_error else "")
    )


def ensure_topics(
    admin_config: dict[str, str], topics: dict[str, int], replication_factor: int = 1,
    min_insync_replicas: int | None = None,
) -> list[str]:
    """Create the topics that do not exist yet and wait until they serve; return the names created.

    ``min_insync_replicas`` (with ``replication_factor`` > 1) is how many replicas must have an
    ``acks=all`` write before it counts; unset, the broker's default applies.
    """
    admin = wait_until_ready(admin_config)
    topic_config = {} if min_insync_replicas is None else {"min.insync.replicas": str(min_insync_replicas)}
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [name for name in topics if name not in existing]
    remaining = wanted
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        new_topics = [NewTopic(name, num_partitions=topics[name], replication_factor=replication_factor,
                               config=topic_config) for name in remaining]
        transient = None
        for name, future in (admin.create_topics(new_topics, operation_timeout=30) if new_topics else {}).items():
            try:
                future.result()
                log.info("created topic %s", name)
            except KafkaException as error:
                # Another process (or a try of ours that looked failed) may have created it: that is fine.
                if "TOPIC_ALREADY_EXISTS" in str(error):
                    continue
                # A cluster still electing its controller, or librdkafka retiring its bootstrap connection under
                # the request ("broker handle destroyed"), answers again a moment later.
                if attempt == CREATE_ATTEMPTS or not _transient(error):
                    raise
                transient = error
        if transient is None:
            break
        log.warning("creating topics failed (attempt %d of %d), retrying: %s", attempt, CREATE_ATTEMPTS, transient)
        time.sleep(attempt)
        existing = set(admin.list_topics(timeout=10).topics)
        remaining = [name for name in wanted if name not in existing]
    for name in wanted:
        # Metadata names a leader before it serves the partition; a watermark query proves it does.
        topic_offsets(admin_config, name, timeout=30)
    return wanted


def _transient(error: KafkaException) -> bool:
    kafka_error = error.args[0] if error.args else None
    return isinstance(kafka_error, KafkaError) and (kafka_error.retriable() or kafka_error.code() in _TRANSIENT_CODES)


def topic_offsets(client_config: dict[str, str], topic: str, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
    """Low and high watermark per partition of ``topic``; retries while leadership settles."""
    consumer = Consumer({**client_config, "group.id": "market-anomaly-offsets",
                         "enable.auto.commit": False, "logger": _probe_logger})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                    for p in sorted(partitions)
                }
            except KafkaException:
                # NOT_LEADER and friends while a new topic settles; librdkafka does not mark them retriable.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        consumer.close()


def read_to_end(client_config: dict[str, str], topic: str, timeout: float = 30.0) -> list:
    """Every message now in ``topic`` (confluent-kafka ``Message``), from the start of each partition to its end offset at call time.

    Stops at the offsets seen when called, so it ends even while producers keep writing.
    """
    ends = {partition: high for partition, (low, high) in topic_offsets(client_config, topic).items() if high > low}
    consumer = Consumer({**client_config, "group.id": "market-anomaly-read", "enable.auto.commit": False})
    messages = []
    try:
        consumer.assign([TopicPartition(topic, partition, 0) for partition in ends])
        position = dict.fromkeys(ends, 0)
        while any(position[p] < ends[p] for p in ends):
            message = consumer.poll(timeout)
            if message is None:
                raise TimeoutError(f"topic {topic}: no message within {timeout}s before its end offsets")
            if message.error() or message.offset() >= ends[message.partition()]:
                continue
            position[message.partition()] = message.offset() + 1
            messages.append(message)
    finally:
        consumer.close()
    return messages


def read_candle_topic(client_config: dict[str, str], topic: str, timeout: float = 30.0):
    """Every candle message now in ``topic``, read from the start of each partition, as a validated frame."""
    import json

    from market_anomaly.candles.files import CandleFileError, candles_from_records

    try:
        messages = read_to_end(client_config, topic, timeout)
    except TimeoutError as error:
        raise CandleFileError(str(error)) from error
    records = []
    for message in messages:
        try:
            records.append(json.loads(message.value()))
        except (TypeError, ValueError):
            records.append(None)  # counted as skipped with the non-objects
    return candles_from_records(records, f"topic {topic}")
