"""The metric definitions: conventions, bounded labels, what each process exports, and the values they take."""

from __future__ import annotations

import types
import urllib.request

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from market_anomaly import metrics
from market_anomaly.kafka.broker import free_port


def families(role: str) -> dict[str, object]:
    from prometheus_client import generate_latest

    return {family.name: family for family in text_string_to_metric_families(generate_latest(metrics.registry(role))
                                                                              .decode())}


def sample(role: str, name: str, **labels) -> float:
    """The sample's value; 0 for a labelled one not created yet."""
    for family in families(role).values():
        for found in family.samples:
            if found.name == name and all(found.labels.get(key) == value for key, value in labels.items()):
                return found.value
    return 0.0


def test_names_follow_prometheus_conventions():
    for role, collectors in metrics.ROLES.items():
        for collector in collectors:
            for family in collector.describe():
                assert family.name.startswith("market_anomaly_"), family.name
                assert family.documentation, family.name
                if family.type == "histogram":
                    assert family.name.endswith("_seconds"), family.name
                if family.type == "gauge" and "lag" in family.name:
                    assert family.name.endswith("_records"), family.name


def test_each_process_exports_only_its_own_part():
    producer, detect, dashboard = families("producer"), families("detect"), families("dashboard")
    assert "market_anomaly_producer_candles" in producer and "market_anomaly_detect_candles_decided" not in producer
    assert "market_anomaly_detect_micro_batch_duration_seconds" in detect and "market_anomaly_producer_candles" not in detect
    assert "market_anomaly_dead_letters" in producer and "market_anomaly_dead_letters" in detect
    assert "market_anomaly_dashboard_request_duration_seconds" in dashboard
    assert "process_cpu_seconds" in producer  # the standard process metrics come along


def test_dead_letter_reasons_are_a_bounded_label_set():
    assert metrics.reason_label("invalid JSON: Expecting value: line 1 column 1 (char 0)") == "invalid json"
    assert metrics.reason_label("missing or non-numeric fields: open, high") == "missing or non-numeric fields"
    assert metrics.reason_label("not a kline event: e='trade'") == "not a kline event"
    labels = {metrics.reason_label(f"reason number {index}x{'y' * index}") for index in range(200)}
    assert len(labels) <= metrics.MAX_REASONS + 1 and "other" in labels


def test_stale_symbols_are_counted_in_market_time():
    freshness = metrics.SymbolFreshness(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 60_000)
    assert freshness.stale() == 0  # nothing yet: starting, not stalled
    freshness.seen("BTCUSDT", 120_000)
    assert freshness.stale() == 2  # the others have no candle
    freshness.seen("ETHUSDT", 60_000)  # one interval behind: fine
    freshness.seen("SOLUSDT", 0)  # two behind: stale
    freshness.seen("XRPUSDT", 999_999)  # not watched
    assert freshness.stale() == 1


def test_decisions_and_progress_move_the_job_metrics():
    decided = sample("detect", "market_anomaly_detect_candles_decided_total")
    high = sample("detect", "market_anomaly_detect_anomalies_total", confidence="HIGH")
    metrics.record_decisions(pd.DataFrame({"is_anomaly": [True, False, True, True],
                                           "confidence": ["HIGH", "NONE", "MEDIUM", "HIGH"]}))
    assert sample("detect", "market_anomaly_detect_candles_decided_total") == decided + 4
    assert sample("detect", "market_anomaly_detect_anomalies_total", confidence="HIGH") == high + 2

    source = types.SimpleNamespace(endOffset='{"crypto-candles": {"0": 10, "1": 7}}',
                                   latestOffset='{"crypto-candles": {"0": 15, "1": 7}}')
    state = [types.SimpleNamespace(memoryUsedBytes=600_000), types.SimpleNamespace(memoryUsedBytes=24_000)]
    metrics.record_progress(types.SimpleNamespace(batchDuration=1500, numInputRows=17, sources=[source],
                                                  stateOperators=state))
    assert sample("detect", "market_anomaly_detect_consumer_lag_records", topic="crypto-candles", partition="0") == 5
    assert sample("detect", "market_anomaly_detect_consumer_lag_records", topic="crypto-candles", partition="1") == 0
    assert sample("detect", "market_anomaly_detect_micro_batch_duration_seconds_bucket", le="2.0") >= 1
    assert sample("detect", "market_anomaly_detect_last_batch_timestamp_seconds") > 1.7e9
    assert sample("detect", "market_anomaly_detect_state_bytes") == 624_000


def test_the_endpoint_binds_localhost_and_zero_serves_none():
    assert metrics.serve("producer", 0) is None
    port = metrics.serve("producer", free_port())
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "# TYPE market_anomaly_producer_candles_total counter" in text
    with pytest.raises(OSError):
        metrics.serve("producer", port)  # taken: a clear failure at start, not a silent missing endpoint


def test_a_metrics_port_in_use_stops_the_command_with_one_line():
    import socket

    from market_anomaly.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit, match="producer: cannot serve metrics on 127.0.0.1:[0-9]+: Address already in use"):
            main(["produce", "--metrics-port", str(taken.getsockname()[1]), "--bootstrap-servers", "127.0.0.1:1"])
