"""`market-anomaly train --topic`: training from the candles already in a Kafka topic."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from market_anomaly.cli import main
from market_anomaly.core.params import DEFAULTS
from market_anomaly.exchange.market import synthetic_candles

pytestmark = pytest.mark.integration


def test_train_reads_every_candle_of_the_topic(kafka_broker, fresh_topic, tmp_path):
    producer = Producer(kafka_broker.client_config())
    for seed, symbol in enumerate(("AAAUSDT", "BBBUSDT")):
        for record in synthetic_candles(1500, seed, symbol).to_dict("records"):
            producer.produce(fresh_topic, key=symbol, value=json.dumps(record).encode())
    producer.produce(fresh_topic, key="junk", value=b"not json")
    assert producer.flush(30) == 0
    base = tmp_path / "base.json"
    base.write_text(json.dumps({**DEFAULTS, "volatility": {**DEFAULTS["volatility"], "history": 48, "warmup": 300}}))
    output = tmp_path / "model_params.json"
    assert main(["train", "--topic", fresh_topic, "--bootstrap-servers", kafka_broker.bootstrap_servers,
                 "--base", str(base), "--output", str(output)]) == 0
    trained_on = json.loads(output.read_text())["trained_on"]
    assert trained_on["candles"] == 3000 and trained_on["sources"] == [f"kafka:{fresh_topic}"]
    assert set(trained_on["series"]) == {"AAAUSDT", "BBBUSDT"}
