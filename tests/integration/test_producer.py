"""The producer against the simulator and a real broker: keyed JSON candles, dead letters, clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from market_anomaly.kafka import topics
from market_anomaly.kafka.broker import free_port

pytestmark = pytest.mark.integration

SYMBOLS = ("BTCUSDT", "ETHUSDT")
MINUTE_MS = 60_000


@pytest.fixture
def exchange():
    """The simulator, fast (10 simulated minutes a second), with a garbage frame every 40 messages."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "market_anomaly", "exchange", "--port", str(port), "--symbols", ",".join(SYMBOLS),
         "--speed", "600", "--history", "300", "--malformed-every", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert "listening" in process.stdout.readline()
    yield f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


def produce(kafka_broker, exchange, topic, *extra) -> subprocess.Popen:
    ws_url, rest_url = exchange
    return subprocess.Popen(
        [sys.executable, "-m", "market_anomaly", "produce", "--bootstrap-servers", kafka_broker.bootstrap_servers,
         "--ws-url", ws_url, "--rest-url", rest_url, "--symbols", ",".join(SYMBOLS), "--topic", topic,
         "--dead-letter-topic", f"{topic}-dlq", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def assert_contiguous_per_symbol(messages) -> dict[str, list[dict]]:
    by_symbol: dict[str, list[dict]] = {}
    for message in messages:
        candle = json.loads(message.value())
        assert message.key().decode() == candle["symbol"]  # keyed by symbol: one partition, in order
        by_symbol.setdefault(candle["symbol"], []).append(candle)
    for symbol, candles in by_symbol.items():
        times = [candle["open_time"] for candle in candles]
        assert all(later - earlier == MINUTE_MS for earlier, later in zip(times, times[1:])), symbol
    return by_symbol


def test_seeded_and_live_candles_arrive_keyed_in_order_and_garbage_is_dead_lettered(kafka_broker, exchange,
                                                                                    fresh_topic):
    topics.ensure_topics(kafka_broker.client_config(), {f"{fresh_topic}-dlq": 1})
    producer = produce(kafka_broker, exchange, fresh_topic, "--seed-history", "50", "--max-candles", "160")
    output, _ = producer.communicate(timeout=120)
    assert producer.returncode == 0, output

    by_symbol = assert_contiguous_per_symbol(topics.read_to_end(kafka_broker.client_config(), fresh_topic))
    assert set(by_symbol) == set(SYMBOLS)
    assert sum(len(candles) for candles in by_symbol.values()) == 160
    for candles in by_symbol.values():
        # The seed, then live candles. Candles that closed between the seed's request and the stream's first
        # candle come from REST too (at 10 market minutes a second there are often a few), never after it.
        sources = [c["source"] for c in candles]
        seeded = sources.index("ws") if "ws" in sources else len(sources)
        assert seeded >= 50 and sources == ["rest"] * seeded + ["ws"] * (len(sources) - seeded), sources
        assert seeded < len(sources), sources  # the stream took over
        first = candles[0]
        assert first["interval"] == "1m" and first["close_time"] == first["open_time"] + MINUTE_MS - 1
        assert first["low"] <= min(first["open"], first["close"]) <= max(first["open"], first["close"]) <= first["high"]
        assert abs(first["produced_at"] - time.time() * 1000) < 300_000  # stamped when sent, for latency

    dead_letters = [json.loads(message.value()) for message in topics.read_to_end(kafka_broker.client_config(), f"{fresh_topic}-dlq")]
    assert dead_letters, "the simulator sent garbage frames; they must reach the dead-letter topic"
    assert all(letter["stage"] == "producer" and letter["reason"] and "raw" in letter for letter in dead_letters)


def test_sigterm_flushes_and_exits_zero(kafka_broker, exchange, fresh_topic):
    topics.ensure_topics(kafka_broker.client_config(), {f"{fresh_topic}-dlq": 1})
    producer = produce(kafka_broker, exchange, fresh_topic)
    time.sleep(8)
    producer.send_signal(signal.SIGTERM)
    output, _ = producer.communicate(timeout=30)
    assert producer.returncode == 0, output
    delivered = topics.read_to_end(kafka_broker.client_config(), fresh_topic)
    assert len(delivered) > 10
    assert_contiguous_per_symbol(delivered)
    assert "0 failed" in output


def test_history_from_a_file_comes_first(kafka_broker, exchange, fresh_topic, tmp_path):
    topics.ensure_topics(kafka_broker.client_config(), {f"{fresh_topic}-dlq": 1})
    history = tmp_path / "history.csv"
    history.write_text("symbol,open_time,open,high,low,close,volume\n"
                       "BTCUSDT,1700000000000,100,101,99,100.5,3\n"
                       "DOGEUSDT,1700000000000,1,1,1,1,1\n"
                       "BTCUSDT,1700000060000,100.5,102,100,101,4\n")
    producer = produce(kafka_broker, exchange, fresh_topic, "--seed-file", str(history), "--max-candles", "10")
    output, _ = producer.communicate(timeout=120)
    assert producer.returncode == 0, output
    candles = [json.loads(m.value()) for m in topics.read_to_end(kafka_broker.client_config(), fresh_topic)]
    seeded = [c for c in candles if c["source"] == "file"]
    assert [(c["symbol"], c["open_time"], c["close"]) for c in seeded] == [
        ("BTCUSDT", 1700000000000, 100.5), ("BTCUSDT", 1700000060000, 101.0)]  # unwatched DOGEUSDT left out
    assert seeded[0]["close_time"] == 1700000059999 and seeded[0]["taker_buy_base"] != seeded[0]["taker_buy_base"]
