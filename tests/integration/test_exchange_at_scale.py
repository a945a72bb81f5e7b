"""The producer against the strict simulator at Binance's scale, both as real processes, with a real broker.

2,000 pairs discovered from exchangeInfo, 100 ms REST latency, a 429 storm, a serverShutdown,
a cut connection, a halt and a new listing mid-run; and a producer killed with SIGKILL and
restarted. Each test compares what the simulator served with what is in Kafka, candle by candle.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest

from market_anomaly.kafka import topics
from market_anomaly.kafka.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
# Real seconds the producer keeps running after the window closes, so a producer a few seconds behind
# (a loaded machine) has delivered the window's last candles before it is stopped.
DELIVERY_GRACE = 15

MINUTE = 60_000


class Simulator:
    """``market-anomaly exchange --control`` in a child process, driven over its /sim endpoints."""

    def __init__(self, *args: str):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "market_anomaly", "exchange", "--port", str(self.port), "--control", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert "listening" in self.process.stdout.readline()
        self.ws_url, self.rest_url = f"ws://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port}"

    def act(self, action: str, **query) -> dict:
        url = f"{self.rest_url}/sim/{action}?" + "&".join(f"{key}={value}" for key, value in query.items())
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as response:
            return json.loads(response.read())

    def report(self) -> dict:
        with urllib.request.urlopen(f"{self.rest_url}/sim/report", timeout=120) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def start_producer(kafka_broker, simulator: Simulator, topic: str, log_path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "market_anomaly", "produce", "--bootstrap-servers", kafka_broker.bootstrap_servers,
         "--ws-url", simulator.ws_url, "--rest-url", simulator.rest_url, "--topic", topic,
         "--dead-letter-topic", f"{topic}-dlq", *extra],
        stdout=open(log_path, "a"), stderr=subprocess.STDOUT, text=True)


def candles_in_kafka(kafka_broker, topic: str) -> dict[str, list[int]]:
    """Open times per symbol, in topic order."""
    by_symbol: dict[str, list[int]] = {}
    for message in topics.read_to_end(kafka_broker.client_config(), topic, timeout=60):
        candle = json.loads(message.value())
        by_symbol.setdefault(candle["symbol"], []).append(candle["open_time"])
    return by_symbol


def compare(served: dict[str, list[int]], in_kafka: dict[str, list[int]], window: tuple[int, int]) -> dict:
    """Served closes in ``window`` against Kafka: counts of served, found, missing, duplicated, unserved."""
    low, high = window
    counts = Counter()
    missing_symbols = set()
    for symbol, times in served.items():
        expected = {t for t in times if low <= t <= high}
        found = [t for t in in_kafka.get(symbol, []) if low <= t <= high]
        counts["served"] += len(expected)
        counts["in_kafka"] += len(set(found) & expected)
        counts["missing"] += len(expected - set(found))
        counts["unserved"] += len(set(found) - expected)
        if expected - set(found):
            missing_symbols.add(symbol)
            print(f"missing {symbol}: {sorted(expected - set(found))[:5]} (window {low}..{high})")
    for symbol, times in in_kafka.items():
        counts["duplicated"] += len(times) - len(set(times))
    counts["symbols_missing_candles"] = len(missing_symbols)
    return dict(counts)


def wait_for(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(0.5)


def test_two_thousand_discovered_pairs_through_storm_shutdown_cut_halt_and_listing(kafka_broker, fresh_topic,
                                                                                  tmp_path):
    topics.ensure_topics(kafka_broker.client_config(), {f"{fresh_topic}-dlq": 1})
    newcomer, halted = "NEWCOINUSDT", "P0007USDT"
    # 30x: a 1m candle closes every 2 s per pair, 1,000 closes a second in all.
    simulator = Simulator("--pairs", "2000", "--unlisted", newcomer, "--speed", "30", "--history", "30",
                          "--rest-latency", "0.1", "--updates-per-candle", "1")
    log_path = tmp_path / "producer.log"
    print(f"\nproducer log: {log_path}")
    producer = None
    try:
        producer = start_producer(kafka_broker, simulator, fresh_topic, log_path, "--symbols", "all",
                                  "--quote", "USDT,BTC", "--discovery-interval", "4", "--stale-intervals", "3")
        started = simulator.report()["now"]
        wait_for(lambda: "connected to" in log_path.read_text() and
                 simulator.report()["open_connections"] == 10, 60, "10 connections of 200 streams")
        time.sleep(12)
        simulator.act("storm", seconds=6)
        simulator.act("cut")          # the reconnect's catch-up meets the storm: REST waits, reading goes on
        time.sleep(12)
        simulator.act("shutdown", grace=3)
        time.sleep(8)
        simulator.act("halt", symbol=halted)
        simulator.act("list", symbol=newcomer)
        time.sleep(24)
        before_stop = simulator.report()
        time.sleep(DELIVERY_GRACE)
        producer.send_signal(signal.SIGTERM)
        assert producer.wait(60) == 0, log_path.read_text()[-3000:]
        report = simulator.report()
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        simulator.stop()

    log = log_path.read_text()
    step = report["interval_ms"]
    in_kafka = candles_in_kafka(kafka_broker, fresh_topic)
    trading = [symbol for symbol in report["closes"] if symbol != newcomer]
    # From the first candle every pair has in Kafka to the last one closed well before the stop.
    first = max(in_kafka[symbol][0] for symbol in trading)
    window = (first, before_stop["now"] - 3 * step)
    counts = compare(report["closes"], in_kafka, window)
    print(f"\n2,000 pairs: window {(window[1] - window[0]) // step} intervals; {counts}; "
          f"connections served {report['connections_served']}, 429s {report['too_many']}, bans {report['bans']}, "
          f"policy closes {report['policy_closes']}")
    assert len(trading) == 2000 and set(trading) <= set(in_kafka), "every discovered pair streamed"
    assert first - started <= 6 * step, "every pair was streaming within a few intervals of the start"
    assert counts["served"] > 2000 * 20
    assert counts["missing"] == 0 and counts["duplicated"] == 0 and counts["unserved"] == 0, counts
    assert report["bans"] == 0 and report["policy_closes"] == 0, "Retry-After and 5 msgs/s respected"
    assert report["too_many"] > 0, "the storm happened"
    assert "keepalive ping timeout" not in log
    assert len(re.findall(r"reconnecting in", log)) == 1, "only the cut connection reconnected"
    assert "handed 200 streams over" in log
    listed = [t for t in in_kafka.get(newcomer, []) if t <= window[1]]
    assert listed and listed == sorted(set(listed)) and listed[0] == report["listed_from"][newcomer], \
        "the new listing streams from its first candle"
    assert f"{halted} is no longer trading (status BREAK)" in log
    assert in_kafka[halted][-1] == report["halted_from"][halted] - step, "the halted pair up to its last candle"


def test_a_killed_producer_restarts_without_gap_or_duplicate(kafka_broker, fresh_topic, tmp_path):
    topics.ensure_topics(kafka_broker.client_config(), {f"{fresh_topic}-dlq": 1})
    simulator = Simulator("--pairs", "60", "--speed", "60", "--history", "50", "--rest-latency", "0.05")
    log_path = tmp_path / "producer.log"
    arguments = ("--symbols", "all", "--quote", "USDT,BTC", "--seed-history", "10")
    producer = None
    try:
        producer = start_producer(kafka_broker, simulator, fresh_topic, log_path, *arguments)
        time.sleep(10)
        producer.send_signal(signal.SIGKILL)         # no flush, no goodbye
        producer.wait(10)
        killed_at = simulator.report()["now"]
        time.sleep(8)                                # eight intervals at 60x
        restarted_at = simulator.report()["now"]
        producer = start_producer(kafka_broker, simulator, fresh_topic, log_path, *arguments)
        time.sleep(10)
        before_stop = simulator.report()
        time.sleep(DELIVERY_GRACE)
        producer.send_signal(signal.SIGTERM)
        assert producer.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        simulator.stop()

    step = before_stop["interval_ms"]
    in_kafka = candles_in_kafka(kafka_broker, fresh_topic)
    window = (max(times[0] for times in in_kafka.values()), before_stop["now"] - 3 * step)
    counts = compare(before_stop["closes"], in_kafka, window)
    print(f"\nrestart: down for {(restarted_at - killed_at) // step} intervals; {counts}")
    assert len(in_kafka) == 60
    for symbol, times in in_kafka.items():
        assert times == list(range(times[0], times[0] + len(times) * step, step)), f"{symbol}: gap or duplicate"
        assert times[0] < killed_at - 5 * step and times[-1] > killed_at + 10 * step, "the outage is covered"
    assert counts["missing"] == 0 and counts["duplicated"] == 0
    assert "resuming 60 symbols from their last candle" in log_path.read_text()
