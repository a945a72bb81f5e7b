"""The local KRaft broker: starts, serves the project's topics, keeps data across a restart."""

from confluent_kafka import Consumer, Producer

from market_anomaly import config
from market_anomaly.kafka import topics
from market_anomaly.kafka.broker import LocalBroker


def test_project_topics_exist_with_partitions(kafka_broker):
    offsets = topics.topic_offsets(kafka_broker.client_config(), config.CANDLES_TOPIC)
    assert sorted(offsets) == [0, 1, 2, 3]
    assert len(topics.topic_offsets(kafka_broker.client_config(), config.DEAD_LETTER_TOPIC)) == 1


def test_restart_keeps_data_and_port(tmp_path):
    broker = LocalBroker(tmp_path / "kafka", port=0)
    broker.start()
    try:
        topics.ensure_topics(broker.client_config(), {"durable": 1})
        producer = Producer({**broker.client_config(), "enable.idempotence": True, "acks": "all"})
        for i in range(5):
            producer.produce("durable", str(i).encode(), key=b"k")
        assert producer.flush(10) == 0
        port = broker.port
    finally:
        assert broker.stop() is True
    assert broker.status()["running"] is False

    again = LocalBroker(tmp_path / "kafka")
    assert again.port == port
    again.start()
    try:
        consumer = Consumer({**again.client_config(), "group.id": "g", "auto.offset.reset": "earliest"})
        consumer.subscribe(["durable"])
        values = []
        for _ in range(50):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                values.append(message.value().decode())
            if len(values) == 5:
                break
        consumer.close()
        assert values == ["0", "1", "2", "3", "4"]
        assert again.status()["ready"] is True
    finally:
        again.stop()
