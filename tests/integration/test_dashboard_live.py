"""The dashboard's server-sent events and /metrics over HTTP, and what /api/health says of a Kafka failure."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import pandas as pd
import pytest

from market_anomaly.kafka.broker import free_port

pytestmark = pytest.mark.integration


class EventStream:
    """A client of /api/events: reads ``event``/``id``/``data`` blocks as they arrive."""

    def __init__(self, url: str, last_event_id: str | None = None):
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        self.response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20)
        assert self.response.headers["Content-Type"] == "text/event-stream"

    def next_event(self) -> dict[str, object]:
        fields: dict[str, object] = {}
        while True:
            line = self.response.readline().decode().rstrip("\n")
            if not line:
                if "event" in fields:
                    return fields
                fields = {}  # the retry advice or a keepalive comment
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value

    def close(self) -> None:
        self.response.close()


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def record_batch(db_url: str, batch_id: int, decisions: list[dict]) -> None:
    from market_anomaly.sinks.database import DatabaseSink, open_database

    sink = DatabaseSink(open_database(db_url))
    sink.write(pd.DataFrame(decisions))
    sink.record_health({"batch_id": batch_id, "input_rows": len(decisions), "at": int(time.time() * 1000)})
    sink.close()


def test_a_new_batch_is_pushed_to_open_streams_and_a_reconnect_resumes(live_dashboard, make_decision, market_frame):
    base, db_url = live_dashboard
    last = int(market_frame[market_frame.symbol == "BTCUSDT"].open_time.max())
    stream = EventStream(f"{base}/api/events?symbol=btcusdt&after={last}")
    deadline = time.monotonic() + 10
    while metric(base, "market_anomaly_dashboard_event_streams") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(base, "market_anomaly_dashboard_event_streams") == 1

    record_batch(db_url, 2, [make_decision("BTCUSDT", 30, 90_400.0), make_decision("ETHUSDT", 30, 3_030.0)])
    candles = stream.next_event()
    assert candles["event"] == "candles" and candles["data"]["symbol"] == "BTCUSDT"
    assert [row["close"] for row in candles["data"]["candles"]] == [90_400.0]  # only what the page lacks
    assert int(candles["id"]) == last + 60_000
    progress = stream.next_event()
    assert progress["event"] == "progress" and progress["data"]["batch_id"] == 2
    stream.close()

    record_batch(db_url, 3, [make_decision("BTCUSDT", 31, 90_500.0, True, "HIGH", "Z-SCORE 9σ")])
    resumed = EventStream(f"{base}/api/events?symbol=BTCUSDT&after=0", last_event_id=str(candles["id"]))
    record_batch(db_url, 4, [make_decision("BTCUSDT", 32, 90_600.0)])
    event = resumed.next_event()  # Last-Event-ID wins over after: minutes 31 and 32, not the whole history
    assert [row["close"] for row in event["data"]["candles"]] == [90_500.0, 90_600.0]
    assert event["data"]["candles"][0]["reasons"] == "Z-SCORE 9σ"
    resumed.close()
    assert metric(base, "market_anomaly_dashboard_events_sent_total") >= 4
    assert metric(base, "market_anomaly_dashboard_request_duration_seconds_count") >= 1


def test_the_dashboard_stops_at_once_with_pages_connected(tmp_path, dashboard_command):
    url = f"sqlite:///{tmp_path / 'anomalies.db'}"
    port = free_port()
    with open(tmp_path / "dashboard.log", "wb") as log:
        process = subprocess.Popen([*dashboard_command, "--port", str(port), "--db", url, "--no-kafka"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                stream = EventStream(f"http://127.0.0.1:{port}/api/events?symbol=BTCUSDT")
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.2)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert time.monotonic() - started < 5  # aiohttp would wait 60 s for a stream that never ends
        stream.close()
    finally:
        if process.poll() is None:
            process.kill()


def test_health_names_a_kafka_failure_without_the_clients_raw_text(tmp_path, dashboard_command):
    url = f"sqlite:///{tmp_path / 'anomalies.db'}"
    port, nowhere = free_port(), free_port()
    with open(tmp_path / "dashboard.log", "wb") as log:
        process = subprocess.Popen([*dashboard_command, "--port", str(port), "--db", url,
                                    "--bootstrap-servers", f"127.0.0.1:{nowhere}",
                                    "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=PLAIN",
                                    "-X", "sasl.username=alice", "-X", "sasl.password=s3cr3t-pass"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        error = None
        while error is None and time.monotonic() < deadline:
            try:
                error = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health",
                                                          timeout=5).read())["kafka"]["error"]
            except OSError:
                pass
            time.sleep(0.5)
        assert error, "no Kafka error reported"
        for part in error.split("; "):
            topic, _, problem = part.partition(": ")
            assert topic in ("crypto-candles", "crypto-candles-dlq", "crypto-anomalies")
            assert problem in ("broker unreachable", "timed out"), error
        assert str(nowhere) not in error and "alice" not in error
    finally:
        process.terminate()
        process.wait(15)
    assert "s3cr3t-pass" not in (tmp_path / "dashboard.log").read_text()
