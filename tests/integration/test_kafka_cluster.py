"""The local three-node KRaft cluster: replicated topics, and acks=all writes that survive a dead node."""

import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import ConfigResource

from market_anomaly import config
from market_anomaly.kafka import topics


def consume(client_config: dict[str, str], topic: str, count: int, timeout: float = 60.0) -> list[str]:
    consumer = Consumer({**client_config, "group.id": f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                values.append(message.value().decode())
    finally:
        consumer.close()
    return values


def produce_all(cluster, topic: str, values: list[str]) -> None:
    producer = Producer({**cluster.client_config(), "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": 30_000})
    failures = []
    for value in values:
        producer.produce(topic, value.encode(), key=value.encode(),
                         on_delivery=lambda error, message: error and failures.append(error))
    assert producer.flush(45) == 0
    assert failures == []


def test_cluster_has_three_brokers_and_replicated_topics(kafka_cluster):
    admin = topics.wait_until_ready(kafka_cluster.client_config(), brokers=3)
    metadata = admin.list_topics(timeout=10)
    assert sorted(metadata.brokers) == [1, 2, 3]
    candles = metadata.topics[config.CANDLES_TOPIC].partitions
    assert len(candles) == 4
    assert all(sorted(partition.replicas) == [1, 2, 3] for partition in candles.values())
    # Leadership is spread over the nodes, not all on one.
    assert len({partition.leader for partition in candles.values()}) > 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, config.CANDLES_TOPIC)
    described = admin.describe_configs([resource])[resource].result()
    assert described["min.insync.replicas"].value == "2"


def test_produce_and_consume_across_nodes_then_survive_a_killed_node(kafka_cluster):
    topic = f"cluster-{uuid.uuid4().hex[:8]}"
    assert kafka_cluster.ensure_topics({topic: 6}) == [topic]
    before = [f"before-{i}" for i in range(60)]
    produce_all(kafka_cluster, topic, before)
    assert sorted(consume(kafka_cluster.client_config(), topic, len(before))) == sorted(before)

    victim = kafka_cluster.brokers[0]
    pid = victim.pid
    assert pid is not None
    victim.kill()
    try:
        assert victim.pid is None
        # Two of three replicas remain: min.insync.replicas=2 still accepts acks=all writes.
        during = [f"during-{i}" for i in range(60)]
        produce_all(kafka_cluster, topic, during)
        assert sorted(consume(kafka_cluster.client_config(), topic, 120)) == sorted(before + during)
    finally:
        victim.start()
    assert victim.pid not in (None, pid)
    topics.wait_until_ready(kafka_cluster.client_config(), brokers=3)
    # The restarted node serves again: a client bootstrapped from it alone reads everything.
    assert sorted(consume({"bootstrap.servers": victim.bootstrap_servers}, topic, 120)) == sorted(before + during)

