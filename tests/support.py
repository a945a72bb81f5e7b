"""Helpers shared by the test files (importable as ``support``: pyproject puts tests/ on the path)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Callable

import pandas as pd

from market_anomaly.core.params import DEFAULTS
from market_anomaly.exchange.market import synthetic_candles

REPOSITORY = Path(__file__).resolve().parents[1]


def market(n: int = 3000, seed: int = 0, symbol: str = "TESTUSDT") -> pd.DataFrame:
    """``n`` one-minute candles of the simulator's synthetic market."""
    return synthetic_candles(n, seed, symbol)


def small_document() -> dict:
    """Defaults with short windows so synthetic series of a few thousand candles warm up."""
    document = json.loads(json.dumps(DEFAULTS))
    document["volatility"].update(history=48, warmup=300)
    document["consensus"].update(false_alarm_budget=2.0)  # a 3-day training set allows few episodes: not none
    return document


def consume_all(client_config: dict[str, str], topic: str, expected: int, timeout: float = 30.0) -> list:
    """Every record of ``topic`` from offset 0 (assigned, no consumer group to wait for), waiting for ``expected``
    (then a second more, so extras show)."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**client_config, "group.id": f"check-{topic}", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [message for message in consumer.consume(1000, timeout=0.5) if message.error() is None]
        messages += [message for message in consumer.consume(1000, timeout=1.0) if message.error() is None]
    finally:
        consumer.close()
    return messages


def stop_process(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 120.0,
                 force: Callable[[], None] | None = None) -> None:
    """Ask ``process`` to stop (``signum``: what `up` or systemd would send) and wait; past ``timeout``,
    ``force()`` (default: SIGKILL the process itself) so a hung job cannot outlive its test."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        (force or process.kill)()
        process.wait(30)
