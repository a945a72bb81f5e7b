import argparse

import pytest

from market_anomaly import config


def test_kafka_overrides_pass_through_verbatim():
    assert config.parse_kafka_overrides(["security.protocol=SASL_SSL", "sasl.password=a=b"]) == {
        "security.protocol": "SASL_SSL", "sasl.password": "a=b",
    }


def test_kafka_override_without_equals_is_an_error():
    with pytest.raises(argparse.ArgumentTypeError, match="not KEY=VALUE"):
        config.parse_kafka_overrides(["acks"])


def test_environment_sets_the_default_bootstrap(monkeypatch):
    monkeypatch.setenv("MARKET_ANOMALY_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    parser = argparse.ArgumentParser()
    config.add_kafka_arguments(parser)
    args = parser.parse_args(["-X", "linger.ms=5"])
    assert config.kafka_client_config(args) == {"bootstrap.servers": "kafka-1:9092,kafka-2:9092", "linger.ms": "5"}
    assert parser.parse_args(["--bootstrap-servers", "x:1"]).bootstrap_servers == "x:1"
