"""The stream on a cluster: `detect` on a Spark standalone cluster (two one-core workers) reading the
three-node KRaft cluster decides exactly what offline `score` decides on the same candles."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import (PARAMS, assert_decisions_equal_offline, database_decisions, minute_market, produce_candles,
                     stop_process)

pytestmark = pytest.mark.integration

SYMBOLS = [f"C{index:02d}USDT" for index in range(8)]
MINUTES = 400


def test_stream_on_the_standalone_cluster_equals_offline_score(spark_cluster, kafka_cluster, tmp_path):
    topic = "cluster-candles"
    kafka_cluster.ensure_topics({topic: 4, "cluster-decisions": 4, "cluster-dead-letters": 1})
    candles = minute_market(SYMBOLS, MINUTES)
    produce_candles(kafka_cluster.client_config(), topic, candles)

    database = tmp_path / "anomalies.db"
    log = tmp_path / "detect.log"
    command = [sys.executable, "-m", "market_anomaly", "--log-level", "INFO", "detect",
               "--master", spark_cluster.master_url, "--bootstrap-servers", kafka_cluster.bootstrap_servers,
               "--topic", topic, "--anomalies-topic", "cluster-decisions", "--dead-letter-topic", "cluster-dead-letters",
               "--db", f"sqlite:///{database}", "--checkpoint-dir", str(tmp_path / "checkpoint"),
               "--console", "off", "--params", str(PARAMS), "--max-offsets-per-trigger", "1000",
               "--run-for", "400"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), cwd=tmp_path,
                           env={**os.environ, "MARKET_ANOMALY_HOME": str(tmp_path)})
    try:
        streamed = database_decisions(database, len(candles), job, timeout=360)
    finally:
        stop_process(job)
    failure = f"\njob log:\n{log.read_text(errors='replace')[-4000:]}\nexecutors:\n{spark_cluster.executor_logs()}"
    assert len(streamed) == len(candles), failure
    # The job ran on the cluster's executors, not in a local master.
    assert spark_cluster.master_url in log.read_text(errors="replace"), failure
    assert spark_cluster.executor_logs(), "no executor ran on the workers"

    assert_decisions_equal_offline(streamed, candles)
