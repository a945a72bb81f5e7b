"""Shared fixtures: a real Kafka broker (KRaft) and a three-node KRaft cluster for the whole session, and where real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import REPOSITORY

SHARED_DATA = Path(os.environ.get("MARKET_ANOMALY_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real Binance candles (``../shared/data``): tests that need them skip where they are absent."""
    if not (SHARED_DATA / "binance").is_dir():
        pytest.skip(f"real candle data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real single-node KRaft broker on a free port, with the project's topics created."""
    from market_anomaly.kafka import topics
    from market_anomaly.kafka.broker import LocalBroker

    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), port=0)
    broker.start()
    try:
        topics.ensure_topics(broker.client_config(), topics.DEFAULT_TOPICS)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory):
    """A real three-node KRaft cluster (each node broker and controller) on free ports, with the
    project's topics created at replication factor 3 and min.insync.replicas 2.

    Shared by the session: a test that kills a node starts it again before it ends.
    """
    from market_anomaly.kafka import topics
    from market_anomaly.kafka.broker import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("kafka-cluster"), brokers=3)
    cluster.start()
    try:
        cluster.ensure_topics(topics.DEFAULT_TOPICS)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster as a user starts one: `market-anomaly spark start` (a master and two one-core
    workers from PySpark's own scripts), stopped with `market-anomaly spark stop`."""
    import subprocess
    import sys

    from market_anomaly.spark.standalone import StandaloneCluster

    home = tmp_path_factory.mktemp("spark-home")
    command = [sys.executable, "-m", "market_anomaly", "spark"]
    environment = {**os.environ, "MARKET_ANOMALY_HOME": str(home)}
    started = subprocess.run([*command, "start", "--workers", "2", "--cores", "1"], env=environment,
                             capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    cluster = StandaloneCluster.attach(home / "spark-cluster")
    assert started.stdout.strip() == cluster.master_url and cluster.status()["alive_workers"] == 2
    try:
        yield cluster
    finally:
        subprocess.run([*command, "stop"], env=environment, capture_output=True, timeout=120)
        assert set(cluster.pids().values()) == {None}, "a Spark daemon outlived `spark stop`"


@pytest.fixture
def fresh_topic(kafka_broker, request):
    """A new, empty topic (4 partitions) for a test that must not see other tests' records."""
    from market_anomaly.kafka import topics

    name = "t-" + request.node.name.replace("[", "-").replace("]", "")[:80]
    topics.ensure_topics(kafka_broker.client_config(), {name: 4})
    return name
