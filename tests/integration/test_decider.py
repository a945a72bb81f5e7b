"""`market-anomaly decide`, the low-latency consumer, on a real broker: it decides exactly what offline `score`
decides on the same candles, once each, through a crash and a restart, and dead-letters what the stream would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from support import (INVALID, PARAMS, assert_decisions_equal_offline, consume_all, database_decisions, minute_market,
                     produce_candles, stop_process)

pytestmark = pytest.mark.integration

SYMBOLS = [f"D{index:02d}USDT" for index in range(8)]
MINUTES = 400


def start_decider(kafka_broker, tmp_path: Path, names: dict[str, str], log_name: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "market_anomaly", "--log-level", "INFO", "decide",
               "--bootstrap-servers", kafka_broker.bootstrap_servers, "--topic", names["candles"],
               "--anomalies-topic", names["decisions"], "--dead-letter-topic", names["dead"],
               "--group-id", names["group"], "--db", f"sqlite:///{tmp_path / 'anomalies.db'}",
               "--checkpoint-dir", str(tmp_path / "checkpoint"), "--console", "off", "--params", str(PARAMS),
               "--checkpoint-every", "1", "--max-poll-records", "500"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(tmp_path / log_name, "wb"), cwd=tmp_path,
                            env={**os.environ, "MARKET_ANOMALY_HOME": str(tmp_path)})


def committed_offsets(kafka_broker, group: str, topic: str) -> list[int]:
    consumer = Consumer({**kafka_broker.client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [p.offset for p in consumer.committed([TopicPartition(topic, n) for n in sorted(partitions)], timeout=10)]
    finally:
        consumer.close()


def end_offsets(kafka_broker, topic: str) -> list[int]:
    consumer = Consumer({**kafka_broker.client_config(), "group.id": "ends", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [consumer.get_watermark_offsets(TopicPartition(topic, n), timeout=10)[1] for n in sorted(partitions)]
    finally:
        consumer.close()


def test_the_decider_equals_offline_score_through_a_crash_and_a_restart(kafka_broker, tmp_path):
    from market_anomaly.kafka import topics

    names = {"candles": "decide-candles", "decisions": "decide-decisions", "dead": "decide-dead-letters",
             "group": "decide-test"}
    topics.ensure_topics(kafka_broker.client_config(), {names["candles"]: 4, names["decisions"]: 4, names["dead"]: 1})
    candles = minute_market(SYMBOLS, MINUTES)
    first = candles[candles["open_time"] < candles["open_time"].min() + 250 * 60_000]
    poison = [raw.encode() if isinstance(raw, str) else raw for raw, _ in INVALID]
    produce_candles(kafka_broker.client_config(), names["candles"], first, extra=poison)

    database = tmp_path / "anomalies.db"
    job = start_decider(kafka_broker, tmp_path, names, "decide-1.log")
    try:
        decided = database_decisions(database, len(first), job, timeout=120)
    finally:
        job.send_signal(signal.SIGKILL)  # a crash: whatever it decided after its last checkpoint is read again
        job.wait(30)
    assert len(decided) == len(first), (tmp_path / "decide-1.log").read_text(errors="replace")[-4000:]

    produce_candles(kafka_broker.client_config(), names["candles"], candles.drop(first.index))
    job = start_decider(kafka_broker, tmp_path, names, "decide-2.log")
    try:
        decided = database_decisions(database, len(candles), job, timeout=120)
    finally:
        stop_process(job)
    log = (tmp_path / "decide-2.log").read_text(errors="replace")
    assert job.returncode == 0, log[-4000:]
    assert "states restored" in log and "0 symbols' states restored" not in log  # resumed from its checkpoint
    assert len(decided) == len(candles), log[-4000:]
    assert_decisions_equal_offline(decided, candles)

    # A clean stop checkpoints and commits everything it read: the group is at the log's end of every partition
    # with records (an empty one has nothing to commit).
    ends = end_offsets(kafka_broker, names["candles"])
    committed = committed_offsets(kafka_broker, names["group"], names["candles"])
    assert [offset for offset, end in zip(committed, ends) if end] == [end for end in ends if end] and sum(ends)
    # Every decision reached the topic too (the crash's replay may have produced some twice, never fewer).
    produced = consume_all(kafka_broker.client_config(), names["decisions"], len(candles))
    assert {(json.loads(m.value())["symbol"], json.loads(m.value())["open_time"]) for m in produced} == set(
        zip(candles["symbol"], candles["open_time"]))
    # The poison went to the dead-letter topic with the stream's reasons, once each.
    dead = [json.loads(m.value()) for m in consume_all(kafka_broker.client_config(), names["dead"], len(poison))]
    assert sorted(record["reason"] for record in dead) == sorted(reason for _, reason in INVALID)
    assert {record["stage"] for record in dead} == {"consumer"}
