"""Secrets stay out of logs, errors and process lists: redaction, Kafka settings from the environment or a file."""

from __future__ import annotations

import argparse

import pytest

from market_anomaly import config
from market_anomaly.cli import options


@pytest.mark.parametrize("text, shown", [
    ("postgresql://app:pw@db:5432/x", "postgresql://app:***@db:5432/x"),
    ("sqlite:////var/a.db", "sqlite:////var/a.db"),
    ("postgresql://db/x?user=app&password=pw", "postgresql://db/x?user=app&password=***"),
    ("https://hooks.example/h?token=abc&name=ok", "https://hooks.example/h?token=***&name=ok"),
    ("https://hooks.slack.com/services/T0/B0/XyZ failed", "https://hooks.slack.com/services/*** failed"),
    ("-X sasl.password=hunter22 -X sasl.username=bob", "-X sasl.password=*** -X sasl.username=bob"),
    ("{'ssl.key.password': 'k3y', 'acks': 'all'}", "{'ssl.key.password': '***', 'acks': 'all'}"),
    ('sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="u" '
     'password="p4ss";', 'sasl.jaas.config=*** required username="u" password="***";'),
    ("delivery of key: BTCUSDT failed: Expecting value: line 1", "delivery of key: BTCUSDT failed: Expecting value: line 1"),
])
def test_redact_hides_passwords_tokens_and_secret_settings(text, shown):
    assert config.redact(text) == shown


def test_registered_secrets_are_hidden_wherever_they_appear():
    config.register_secret("https://hooks.example/T0/s3cr3t", "https://hooks.example/…")
    assert config.redact("POST https://hooks.example/T0/s3cr3t: timed out") == "POST https://hooks.example/…: timed out"
    config.register_secret("ab")  # too short to mask without hiding ordinary text
    assert config.redact("tab") == "tab"


def test_webhook_urls_are_shown_without_their_path():
    assert config.redact_url("https://hooks.slack.com/services/T0/B0/XyZ?token=abc") == "https://hooks.slack.com/…"
    assert config.redact_url("http://user:pw@127.0.0.1:8080/hook") == "http://127.0.0.1:8080/…"
    assert config.redact_url("hooks.slack.com/services/T0/B0/XyZ") == "hooks.slack.com/…"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_kafka_arguments(parser)
    return parser.parse_args(list(argv))


def test_kafka_settings_from_a_file_then_the_environment_then_flags(tmp_path, monkeypatch):
    properties = tmp_path / "client.properties"
    properties.write_text("# Kafka's client.properties format\nsecurity.protocol=SASL_SSL\nsasl.mechanism: PLAIN\n"
                          "sasl.username=file-user\nsasl.password=from-file\n"
                          "ssl.ca.location = /etc/ca.pem\nsasl.jaas.config=a \\\n  b\n")
    monkeypatch.setenv("MARKET_ANOMALY_KAFKA_CFG_SASL_PASSWORD", "from-env-secret")
    monkeypatch.setenv("MARKET_ANOMALY_KAFKA_CFG_CLIENT_ID", "env-client")
    settings = options.kafka_client_config(parse("--kafka-config-file", str(properties), "-X", "client.id=flag"))
    assert settings == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "file-user",
                        "sasl.password": "from-env-secret", "ssl.ca.location": "/etc/ca.pem", "sasl.jaas.config": "a b",
                        "client.id": "flag", "bootstrap.servers": config.DEFAULT_BOOTSTRAP}
    assert config.redact(f"auth failed for {settings['sasl.password']}") == "auth failed for ***"
    monkeypatch.setenv("MARKET_ANOMALY_KAFKA_CONFIG_FILE", str(properties))
    assert options.kafka_client_config(parse())["sasl.username"] == "file-user"  # the file from the environment


def test_a_bad_properties_file_is_a_usage_error_naming_the_line_not_its_value(tmp_path, capsys):
    properties = tmp_path / "bad.properties"
    properties.write_text("security.protocol=SASL_SSL\njust-a-s3cr3t-value\n")
    with pytest.raises(SystemExit):
        parse("--kafka-config-file", str(properties))
    error = capsys.readouterr().err
    assert "line 2: not KEY=VALUE" in error and "s3cr3t" not in error
    with pytest.raises(SystemExit):
        parse("--kafka-config-file", str(tmp_path / "missing.properties"))
    assert "cannot read the Kafka properties file" in capsys.readouterr().err
