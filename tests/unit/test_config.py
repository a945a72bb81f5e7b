import argparse

import pytest

from market_anomaly.cli import options


def test_kafka_overrides_pass_through_verbatim():
    assert options.parse_pairs(["security.protocol=SASL_SSL", "sasl.password=a=b"]) == {
        "security.protocol": "SASL_SSL", "sasl.password": "a=b",
    }


def test_kafka_override_without_equals_is_an_error():
    with pytest.raises(argparse.ArgumentTypeError, match="not KEY=VALUE"):
        options.parse_pairs(["acks"])


@pytest.mark.parametrize("flag", ["-X", "--conf", "--source-option"])
def test_a_pass_through_flag_without_equals_is_a_usage_error_not_a_traceback(flag, capsys):
    from market_anomaly.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["detect", flag, "acks"])
    assert stopped.value.code == 2 and "'acks' is not KEY=VALUE" in capsys.readouterr().err


def test_environment_sets_the_default_bootstrap(monkeypatch):
    monkeypatch.setenv("MARKET_ANOMALY_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    parser = argparse.ArgumentParser()
    options.add_kafka_arguments(parser)
    args = parser.parse_args(["-X", "linger.ms=5"])
    assert options.kafka_client_config(args) == {"bootstrap.servers": "kafka-1:9092,kafka-2:9092", "linger.ms": "5"}
    assert parser.parse_args(["--bootstrap-servers", "x:1"]).bootstrap_servers == "x:1"
