"""The stream on a cluster: `detect` on a Spark standalone cluster (two one-core workers) reading the
three-node KRaft cluster decides exactly what offline `score` decides on the same candles."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer
from support import REPOSITORY, market, stop_process

from market_anomaly.core import load_params
from market_anomaly.training.injection import inject
from market_anomaly.training.scoring import score_candles

pytestmark = pytest.mark.integration

SYMBOLS = [f"C{index:02d}USDT" for index in range(8)]
MINUTES = 400
SPIKE_AT = 330  # row of the price spike injected into the first symbol: past every detector's warm-up
MINUTE_MS = 60_000
PARAMS = REPOSITORY / "model_params.json"


def cluster_candles() -> pd.DataFrame:
    frames = []
    for seed, symbol in enumerate(SYMBOLS):
        candles = market(MINUTES, seed, symbol)
        shift = candles["open_time"].iat[0] % MINUTE_MS  # on the minute, as an exchange sends them
        candles = candles.assign(**{name: candles[name] - shift for name in ("open_time", "close_time", "produced_at")})
        if seed == 0:  # an anomaly, so the comparison covers a decision that raises one
            candles, _ = inject(candles, "price_spike", SPIKE_AT, np.random.default_rng(0), magnitude=14.0)
        frames.append(candles)
    return pd.concat(frames, ignore_index=True)


def stream_decisions(database, expected: int, job: subprocess.Popen, timeout: float) -> pd.DataFrame:
    deadline = time.monotonic() + timeout
    decisions = pd.DataFrame()
    while time.monotonic() < deadline and job.poll() is None:
        if database.exists():
            with sqlite3.connect(database, timeout=30) as connection:
                try:
                    decisions = pd.read_sql_query("SELECT * FROM decisions", connection)
                except (pd.errors.DatabaseError, sqlite3.OperationalError):
                    pass  # the job has not created its schema yet
            if len(decisions) >= expected:
                break
        time.sleep(2)
    return decisions


def test_stream_on_the_standalone_cluster_equals_offline_score(spark_cluster, kafka_cluster, tmp_path):
    topic = "cluster-candles"
    kafka_cluster.ensure_topics({topic: 4, "cluster-decisions": 4, "cluster-dead-letters": 1})
    candles = cluster_candles()
    producer = Producer({**kafka_cluster.client_config(), "acks": "all", "linger.ms": 20})
    for record in candles.sort_values(["open_time", "symbol"]).to_dict("records"):
        producer.produce(topic, json.dumps(record).encode(), key=record["symbol"].encode())
        producer.poll(0)
    assert producer.flush(60) == 0

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
        streamed = stream_decisions(database, len(candles), job, timeout=360)
    finally:
        stop_process(job)
    failure = f"\njob log:\n{log.read_text(errors='replace')[-4000:]}\nexecutors:\n{spark_cluster.executor_logs()}"
    assert len(streamed) == len(candles), failure
    # The job ran on the cluster's executors, not in a local master.
    assert spark_cluster.master_url in log.read_text(errors="replace"), failure
    assert spark_cluster.executor_logs(), "no executor ran on the workers"

    offline = score_candles(candles, load_params(PARAMS)).set_index(["symbol", "open_time"]).sort_index()
    streamed = streamed.set_index(["symbol", "open_time"]).sort_index()
    assert list(streamed.index) == list(offline.index)
    # Something to compare: warmed-up z-scores, and the injected spike raised an anomaly.
    assert offline["zscore"].notna().sum() > 1000 and offline["is_anomaly"].any()
    assert (streamed["votes"].to_numpy() == offline["votes"].to_numpy()).all()
    assert (streamed["is_anomaly"].astype(bool).to_numpy() == offline["is_anomaly"].to_numpy()).all()
    assert (streamed["confidence"].to_numpy() == offline["confidence"].to_numpy()).all()
    assert streamed["zscore"].fillna(0).to_numpy() == pytest.approx(offline["zscore"].fillna(0).to_numpy(), abs=1e-9)
