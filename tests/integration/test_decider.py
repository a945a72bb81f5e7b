"""`market-anomaly decide`, the low-latency consumer, on a real broker: it decides exactly what offline `score`
decides on the same candles, once each, through a crash and a restart, and dead-letters what the stream would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from support import (INVALID, PARAMS, assert_decisions_equal_offline, consume_all, database_decisions, minute_market,
                     produce_candles, stop_process)

pytestmark = pytest.mark.integration

SYMBOLS = [f"D{index:02d}USDT" for index in range(8)]  # all in one partition of four (CRC32 of the key)
MINUTES = 400


def start_decider(kafka_broker, tmp_path: Path, names: dict[str, str], log_name: str, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "market_anomaly", "--log-level", "INFO", "decide",
               "--bootstrap-servers", kafka_broker.bootstrap_servers, "--topic", names["candles"],
               "--anomalies-topic", names["decisions"], "--dead-letter-topic", names["dead"],
               "--group-id", names["group"], "--db", f"sqlite:///{tmp_path / 'anomalies.db'}",
               "--checkpoint-dir", str(tmp_path / "checkpoint"), "--console", "off", "--params", str(PARAMS),
               "--checkpoint-every", "1", "--max-poll-records", "500", *flags]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(tmp_path / log_name, "wb"), cwd=tmp_path,
                            env={**os.environ, "MARKET_ANOMALY_HOME": str(tmp_path)})


def at_the_end(kafka_broker, names: dict[str, str]) -> bool:
    """The group's committed offsets are at the log's end of every partition with records (an empty one has
    nothing to commit)."""
    ends = end_offsets(kafka_broker, names["candles"])
    committed = committed_offsets(kafka_broker, names["group"], names["candles"])
    return sum(ends) > 0 and [offset for offset, end in zip(committed, ends) if end] == [end for end in ends if end]


def assignments(log: Path) -> list[list[int]]:
    """The partitions a member was given, each time (from its log)."""
    return [json.loads(found) for found in re.findall(r"assigned partitions (\[[0-9, ]*\])", log.read_text())]


def current_shares(directory: Path) -> list[list[int]]:
    """Each member's partitions now (members a and b)."""
    return [(assignments(directory / f"member-{name}.log") or [[]])[-1] for name in ("a", "b")]


def committed_offsets(kafka_broker, group: str, topic: str) -> list[int]:
    consumer = Consumer({**kafka_broker.client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        wanted = [TopicPartition(topic, n) for n in sorted(partitions)]
        return [p.offset for p in consumer.committed(wanted, timeout=10)]
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
        # Once a checkpoint covers what it read (the group's offsets are committed only after one), a crash.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not at_the_end(kafka_broker, names):
            time.sleep(0.5)
    finally:
        job.send_signal(signal.SIGKILL)
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

    # A clean stop checkpoints and commits everything it read.
    assert at_the_end(kafka_broker, names)
    # Every decision reached the topic too (the crash's replay may have produced some twice, never fewer).
    produced = consume_all(kafka_broker.client_config(), names["decisions"], len(candles))
    assert {(json.loads(m.value())["symbol"], json.loads(m.value())["open_time"]) for m in produced} == set(
        zip(candles["symbol"], candles["open_time"]))
    # The poison went to the dead-letter topic with the stream's reasons, once each.
    dead = [json.loads(m.value()) for m in consume_all(kafka_broker.client_config(), names["dead"], len(poison))]
    assert sorted(record["reason"] for record in dead) == sorted(reason for _, reason in INVALID)
    assert {record["stage"] for record in dead} == {"consumer"}


def test_two_members_share_the_partitions_and_one_takes_over_when_the_other_dies(kafka_broker, tmp_path):
    from market_anomaly.kafka import topics

    names = {"candles": "members-candles", "decisions": "members-decisions", "dead": "members-dead-letters",
             "group": "members-test"}
    topics.ensure_topics(kafka_broker.client_config(), {names["candles"]: 4, names["decisions"]: 4, names["dead"]: 1})
    # Names that the producer's partitioner (CRC32 of the key) spreads over all four partitions.
    candles = minute_market(["BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT", "DOGEUSDT", "DOTUSDT",
                             "LTCUSDT", "LINKUSDT", "AVAXUSDT", "ATOMUSDT", "NEARUSDT", "FILUSDT", "ALGOUSDT",
                             "TRXUSDT"], 360)
    first = candles[candles["open_time"] < candles["open_time"].min() + 200 * 60_000]

    database = tmp_path / "anomalies.db"
    survivor = start_decider(kafka_broker, tmp_path, names, "member-a.log", "--member", "a")
    doomed = start_decider(kafka_broker, tmp_path, names, "member-b.log", "--member", "b")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(shares := current_shares(tmp_path)):
            time.sleep(0.5)
        assert sorted(shares[0] + shares[1]) == [0, 1, 2, 3] and all(shares), shares  # each took a share
        produce_candles(kafka_broker.client_config(), names["candles"], first)
        decided = database_decisions(database, len(first), survivor, timeout=120)
        assert len(decided) == len(first)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(30)
        produce_candles(kafka_broker.client_config(), names["candles"], candles.drop(first.index))
        decided = database_decisions(database, len(candles), survivor, timeout=120)
    finally:
        stop_process(doomed)
        stop_process(survivor)
    log = (tmp_path / "member-a.log").read_text(errors="replace")
    assert len(decided) == len(candles), log[-4000:]
    assert assignments(tmp_path / "member-a.log")[-1] == [0, 1, 2, 3]  # it took the dead member's share over
    assert_decisions_equal_offline(decided, candles)


def test_a_database_locked_past_the_poll_interval_loses_nothing_and_the_member_rejoins(kafka_broker, tmp_path):
    """The database sink retries inside the poll loop; a member that stops polling past max.poll.interval.ms
    falls out of the group, and when the database is back it rejoins and reads on from its checkpoint."""
    import sqlite3

    from market_anomaly.kafka import topics

    names = {"candles": "locked-candles", "decisions": "locked-decisions", "dead": "locked-dead-letters",
             "group": "locked-test"}
    topics.ensure_topics(kafka_broker.client_config(), {names["candles"]: 4, names["decisions"]: 4, names["dead"]: 1})
    candles = minute_market(["BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT", "DOGEUSDT",
                             "DOTUSDT"], 400)
    first = candles[candles["open_time"] < candles["open_time"].min() + 200 * 60_000]
    produce_candles(kafka_broker.client_config(), names["candles"], first)
    database = tmp_path / "anomalies.db"
    job = start_decider(kafka_broker, tmp_path, names, "decide.log", "-X", "max.poll.interval.ms=15000")
    try:
        assert len(database_decisions(database, len(first), job, timeout=120)) == len(first)
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # every writer waits; the sink's 30 s busy timeout runs out, then it retries
        produce_candles(kafka_broker.client_config(), names["candles"], candles.drop(first.index))
        # Held until the sink's write has failed once (a health record may have waited out its 30 s first).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "sink database: delivering" not in (tmp_path / "decide.log").read_text(
                errors="replace"):
            time.sleep(1)
        time.sleep(15)  # past max.poll.interval.ms: the member falls out of the group
        assert job.poll() is None
        lock.execute("COMMIT")
        lock.close()
        decided = database_decisions(database, len(candles), job, timeout=120)
    finally:
        stop_process(job)
    log = (tmp_path / "decide.log").read_text(errors="replace")
    assert "database is locked" in log and "sink database: delivered after" in log, log[-4000:]
    assert len(decided) == len(candles), log[-4000:]
    assert_decisions_equal_offline(decided, candles)


def test_members_mark_a_market_wide_minute_on_the_whole_market(kafka_broker, tmp_path):
    """Three of member a's symbols and two of member b's spike in the same minute: a alone would call it market-wide
    (3 of its 8), b alone would not (2 of 8 is under 3); the market (5 of 16) is. The members share their minute
    counts on the market topic, so both end with offline ``score``'s marks on the whole market."""
    import zlib

    import numpy as np
    import pandas as pd

    from market_anomaly.core import load_params
    from market_anomaly.kafka import topics
    from market_anomaly.training.injection import inject
    from market_anomaly.training.scoring import score_candles

    names = {"candles": "market-candles", "decisions": "market-decisions", "dead": "market-dead-letters",
             "group": "market-test"}
    topics.ensure_topics(kafka_broker.client_config(), {names["candles"]: 4, names["decisions"]: 4, names["dead"]: 1})
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT", "DOGEUSDT", "DOTUSDT",
               "LTCUSDT", "LINKUSDT", "AVAXUSDT", "ATOMUSDT", "NEARUSDT", "FILUSDT", "ALGOUSDT", "TRXUSDT"]
    partition_of = {symbol: zlib.crc32(symbol.encode()) % 4 for symbol in symbols}  # librdkafka's default
    members = [start_decider(kafka_broker, tmp_path, names, f"member-{name}.log", "--member", name)
               for name in ("a", "b")]
    database = tmp_path / "anomalies.db"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(shares := current_shares(tmp_path)):
            time.sleep(0.5)
        assert sorted(shares[0] + shares[1]) == [0, 1, 2, 3] and all(shares), shares
        own = [[symbol for symbol in symbols if partition_of[symbol] in share] for share in shares]
        big, small = sorted(own, key=len, reverse=True)
        assert len(big) >= 6 and len(small) >= 2, own  # room for the split below
        spiking = set(big[:3]) | set(small[:2])
        candles = minute_market(symbols, 400, spike_at=None)
        frames = []
        for symbol, frame in candles.groupby("symbol", sort=False):
            frame = frame.reset_index(drop=True)
            if symbol in spiking:
                frame, _ = inject(frame, "price_spike", 330, np.random.default_rng(1), magnitude=14.0)
            frames.append(frame)
        candles = pd.concat(frames, ignore_index=True)
        offline = score_candles(candles, load_params(PARAMS))  # marked on the whole market
        marked = offline[offline["market_event"]]
        assert set(spiking) <= set(marked["symbol"]), marked[["symbol", "open_time", "reasons"]]
        minute = marked["open_time"].mode()[0]
        alone = offline[(offline["open_time"] == minute) & offline["symbol"].isin(small)]
        assert alone["is_anomaly"].sum() < 3  # member b's own symbols: not a market event by themselves

        produce_candles(kafka_broker.client_config(), names["candles"], candles)
        decided = database_decisions(database, len(candles), members[0], timeout=120)
        deadline = time.monotonic() + 30  # the last corrections follow the counts from the other member
        while time.monotonic() < deadline and decided["market_event"].fillna(False).astype(bool).sum() < len(marked):
            time.sleep(1)
            decided = database_decisions(database, len(candles), members[0], timeout=10)
    finally:
        for member in members:
            stop_process(member)
    logs = "".join((tmp_path / f"member-{name}.log").read_text(errors="replace") for name in ("a", "b"))
    assert len(decided) == len(candles), logs[-4000:]
    read = consume_all(kafka_broker.client_config(), names["candles"], len(candles))
    assert {message.key().decode(): message.partition() for message in read} == partition_of  # the split was as meant
    assert_decisions_equal_offline(decided, candles)  # the marks and their MARKET n/N included
    assert "market-wide mark corrected" in logs


def test_a_member_started_late_takes_the_counts_shared_in_the_span_its_tally_keeps(kafka_broker):
    """Counts shared before a member starts are in its tally when they are from the last ``keep_minutes`` minutes:
    another member's, and its own former run's (a restart from a checkpoint inside a minute); older ones are not,
    nor those of a pipeline beside on another candle topic."""
    import pandas as pd
    from confluent_kafka import Producer

    from market_anomaly.decider.market import SharedTally
    from market_anomaly.kafka import topics
    from market_anomaly.spark.job import BatchHandler

    topic = "late-member-tally"
    kafka = kafka_broker.client_config()
    topics.ensure_topics(kafka, {topic: 1})
    stale = Producer(kafka)  # counts shared three hours ago: outside the two hours a tally keeps
    stale.produce(topic, json.dumps({"candles": "late-candles", "member": "old", "interval": "1m", "open_time": 0,
                                     "decided": ["OLDUSDT"], "anomalous": ["OLDUSDT"]}).encode(),
                  timestamp=int((time.time() - 3 * 3600) * 1000))
    assert stale.flush(10) == 0
    earlier = {}
    for member, symbols, candles in (("a", ["AUSDT", "BUSDT"], "late-candles"), ("b", ["CUSDT"], "late-candles"),
                                     ("c", ["ETHUSDT"], "other-candles")):
        earlier[member] = SharedTally(kafka, topic, BatchHandler(None, None, str(PARAMS)), candles, member).start()
        earlier[member].publish(pd.DataFrame({"symbol": symbols, "interval": "1m", "open_time": 60_000,
                                              "is_anomaly": [True] * len(symbols)}))
        earlier[member].close()

    late = SharedTally(kafka, topic, BatchHandler(None, None, str(PARAMS)), "late-candles", "a").start()  # restarted
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and late.merged < 2:
            time.sleep(0.2)
        time.sleep(1)  # anything more would be a count it should not have taken
    finally:
        late.close()
    minutes = late.handler.tally.minutes
    assert late.merged == 2
    assert set(minutes) == {("1m", 60_000)}
    assert minutes[("1m", 60_000)][0] == {"AUSDT", "BUSDT", "CUSDT"} == minutes[("1m", 60_000)][1]
