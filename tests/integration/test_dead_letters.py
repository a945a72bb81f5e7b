"""Dead letters against the real broker: whatever came in, the record fits and arrives; a failure is counted."""

from __future__ import annotations

import json

import pytest
from support import consume_all

from market_anomaly.candles.record import Rejected
from market_anomaly.exchange.client import parse_frame
from market_anomaly.kafka.dead_letter import RAW_BYTES, DeadLetterPublisher
from market_anomaly.producer.service import CandleProducer

pytestmark = pytest.mark.integration


def test_a_one_mebibyte_frame_takes_the_dead_letter_path_and_the_producer_goes_on(kafka_broker, fresh_topic):
    frame = '{"e": "kline", "k": {"s": "' + "\\u00e9\\ud800" * 100_000 + '"}, "pad": "' + "x" * 400_000 + '"}'
    assert len(frame.encode()) >= 1_000_000  # escaped: JSON-encoding it again makes it ~6 times larger
    item = parse_frame(frame)
    assert isinstance(item, Rejected)
    producer = CandleProducer(kafka_broker.client_config(), fresh_topic + "-candles", fresh_topic)
    producer.send(item)
    producer.send(Rejected("\udcff" * 1_048_576, "x" * 1_048_576))  # a lone surrogate, a huge reason
    assert producer.close() == 0
    assert producer.dead_letters.sent == 2 and producer.dead_letters.failed == 0
    letters = [json.loads(m.value()) for m in consume_all(kafka_broker.client_config(), fresh_topic, 2)]
    assert len(letters) == 2
    first = next(letter for letter in letters if letter["raw"].startswith('{"e"'))
    assert first["stage"] == "producer" and first["raw"] == frame[:RAW_BYTES] and first["reason"] == item.reason[:500]
    assert all(len(letter["raw"].encode()) <= RAW_BYTES for letter in letters)


def test_a_dead_letter_that_cannot_be_delivered_is_counted_and_never_raised(caplog):
    publisher = DeadLetterPublisher({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": "1000"}, "anything")
    publisher.publish(b"\xff" * 10, "not a candle")
    publisher.flush(timeout=5)
    assert publisher.failed == 1 and publisher.sent == 1
    assert "dead letter to anything lost" in caplog.text
