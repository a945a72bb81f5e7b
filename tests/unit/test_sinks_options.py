"""The detect command's output flags, the fan-out that isolates a failing sink, and the shared helpers."""

from __future__ import annotations

import argparse
import io
import logging
import threading
import math

import numpy as np
import pandas as pd
import pytest

from market_anomaly.cli import options
from market_anomaly.cli.detect import add_sink_arguments, sink_options
from market_anomaly.sinks import RetryPolicy, SinkOptions, Sinks, Stopping, build_sinks
from market_anomaly.sinks.common import levels_at_least, to_records
from market_anomaly.sinks.console import ConsoleSink
from market_anomaly.sinks.database import DatabaseError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_kafka_arguments(parser)
    add_sink_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("MARKET_ANOMALY_HOME", str(tmp_path))
    monkeypatch.delenv("MARKET_ANOMALY_WEBHOOK_URLS", raising=False)
    monkeypatch.delenv("MARKET_ANOMALY_DB", raising=False)
    options = sink_options(parse())
    assert options == SinkOptions(
        db_url=f"sqlite:///{tmp_path / 'anomalies.db'}", anomalies_topic="crypto-anomalies", anomalies_only=False,
        console="auto", webhooks=(), webhook_format="slack", alert_min_confidence="MEDIUM", alert_cooldown=900.0,
        kafka_config={"bootstrap.servers": "localhost:9092"},
    )


def test_flags_env_webhooks_and_none(monkeypatch):
    monkeypatch.setenv("MARKET_ANOMALY_WEBHOOK_URLS", "https://hooks.example/a?token=1, https://hooks.example/b")
    options = sink_options(parse(
        "--db", "none", "--anomalies-topic", "NONE", "--anomalies-only", "--console", "anomalies",
        "--webhook", "https://hooks.example/b", "--webhook", "http://127.0.0.1:9/x", "--webhook-format", "json",
        "--alert-min-confidence", "high", "--alert-cooldown", "60", "--bootstrap-servers", "k:9092",
        "-X", "security.protocol=SSL",
    ))
    assert (options.db_url, options.anomalies_topic, options.anomalies_only, options.console) == (
        None, None, True, "anomalies")
    assert options.retention_days == 7.0
    assert options.webhooks == ("https://hooks.example/b", "http://127.0.0.1:9/x", "https://hooks.example/a?token=1")
    assert (options.webhook_format, options.alert_min_confidence, options.alert_cooldown) == ("json", "HIGH", 60.0)
    assert options.kafka_config == {"bootstrap.servers": "k:9092", "security.protocol": "SSL"}


@pytest.mark.parametrize("days, expected", [("0", 0.0), ("2.5", 2.5), ("30", 30.0)])
def test_retention_days(days, expected):
    assert sink_options(parse("--retention-days", days)).retention_days == expected


@pytest.mark.parametrize("days", ["-1", "nan", "inf", "week"])
def test_retention_days_refuses_what_is_not_a_number_of_days(days, capsys):
    with pytest.raises(SystemExit):
        parse("--retention-days", days)
    assert "--retention-days" in capsys.readouterr().err


def test_console_only_and_bad_database_url_fails_at_startup():
    sinks = build_sinks(SinkOptions(console="anomalies"))
    assert [sink.name for sink in sinks.sinks] == ["console"]
    with pytest.raises(DatabaseError, match="unsupported database URL 'mysql://u:\\*\\*\\*@db/x'"):
        build_sinks(SinkOptions(db_url="mysql://u:pw@db/x"))


class BrokenSink:
    name = "broken"
    durable = False

    def write(self, decisions):
        raise ConnectionError("receiver gone")

    def flush(self):
        pass

    def close(self):
        raise ConnectionError("receiver gone")


def test_a_failing_best_effort_sink_is_logged_and_counted_and_the_others_still_run(caplog):
    out = io.StringIO()
    sinks = Sinks([BrokenSink(), ConsoleSink("all", out)])
    frame = pd.DataFrame([{"symbol": "BTCUSDT", "open_time": 0, "close": 1.0, "is_anomaly": False}])
    with caplog.at_level(logging.ERROR):
        sinks.write(frame)
        sinks.write(frame)
        sinks.close()
    assert out.getvalue().count("BTCUSDT") == 2
    assert sinks.failures == {"broken": 3, "console": 0}
    assert ("sink broken: writing 1 decision(s) failed: receiver gone (2 failure(s) so far); the stream continues"
            in caplog.text)
    assert [bool(record.exc_info) for record in caplog.records] == [True, False, False]


class FlakyDurableSink:
    """Takes what it is given; its flush fails ``failures`` times first (a database locked, a broker away)."""

    name = "flaky"
    durable = True

    def __init__(self, failures: int):
        self.failures, self.pending, self.delivered = failures, [], []

    def write(self, decisions):
        self.pending.append(decisions)

    def flush(self):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database is locked")
        self.delivered += self.pending
        self.pending = []

    def close(self):
        pass


class Health:
    def __init__(self):
        self.records = []

    def record_health(self, progress):
        self.records.append(progress)


def test_a_durable_sink_is_retried_until_it_has_the_batch_and_health_shows_the_outage_meanwhile():
    flaky, health, out = FlakyDurableSink(failures=3), Health(), io.StringIO()
    sinks = Sinks([flaky, ConsoleSink("all", out)], health=health, retry=RetryPolicy(first=0.01, longest=0.02))
    sinks.record_health({"batch_id": 4, "input_rows": 10})
    frame = pd.DataFrame([{"symbol": "BTCUSDT", "open_time": 0, "close": 1.0, "is_anomaly": False}])
    sinks.write(frame)
    assert len(flaky.delivered) == 1 and flaky.delivered[0] is not None  # written once, flushed until it took it
    assert out.getvalue().count("BTCUSDT") == 1  # best-effort sinks are not repeated
    outages = [record["sinks"] for record in health.records[1:]]
    assert [outage["flaky"]["attempts"] for outage in outages[:3]] == [1, 2, 3]
    assert outages[0]["flaky"]["error"] == "database is locked" and outages[-1] == {}
    assert health.records[1]["batch_id"] == 4  # the last progress, with the outage
    assert sinks.outages == {} and sinks.failures["flaky"] == 3


def test_stopping_ends_a_durable_sinks_retries_and_the_batch_stays_uncommitted():
    sinks = Sinks([FlakyDurableSink(failures=10**9)], retry=RetryPolicy(first=0.05, longest=0.05))
    threading.Timer(0.2, sinks.stop_retrying).start()
    with pytest.raises(Stopping, match="database is locked"):
        sinks.write(pd.DataFrame([{"symbol": "BTCUSDT", "open_time": 0, "close": 1.0, "is_anomaly": False}]))


class MeetingSink(FlakyDurableSink):
    """A durable sink whose flush waits until every sink of ``met`` is flushing too (at most 5 s)."""

    def __init__(self, name: str, met: threading.Barrier, failures: int = 0):
        super().__init__(failures)
        self.name, self.met, self.met_all = name, met, False

    def flush(self):
        if not self.met_all:
            self.met.wait(timeout=5)  # raises BrokenBarrierError when the others never came
            self.met_all = True
        super().flush()


def test_durable_sinks_deliver_a_batch_side_by_side():
    met = threading.Barrier(2)
    database, topic = MeetingSink("database", met), MeetingSink("kafka", met)
    sinks = Sinks([database, topic], retry=RetryPolicy(first=0.05, longest=0.05))
    frame = pd.DataFrame([{"symbol": "BTCUSDT", "open_time": 0, "close": 1.0, "is_anomaly": False}])
    writing = threading.Thread(target=sinks.write, args=(frame,), daemon=True)
    writing.start()
    writing.join(timeout=10)
    sinks.stop_retrying()  # one after the other, the first would wait for the second for ever
    assert not writing.is_alive(), "the second durable sink was not flushing while the first waited"
    assert len(database.delivered) == len(topic.delivered) == 1 and set(sinks.seconds) == {"database", "kafka"}
    sinks.close()


def test_a_durable_sink_giving_up_at_stop_waits_for_the_others_delivery():
    met = threading.Barrier(2)
    failing, healthy = MeetingSink("database", met, failures=10**9), MeetingSink("kafka", met)
    sinks = Sinks([failing, healthy], retry=RetryPolicy(first=0.05, longest=0.05))
    threading.Timer(0.3, sinks.stop_retrying).start()
    with pytest.raises(Stopping, match="sink database still failing"):
        sinks.write(pd.DataFrame([{"symbol": "BTCUSDT", "open_time": 0, "close": 1.0, "is_anomaly": False}]))
    assert len(healthy.delivered) == 1 and failing.delivered == []


def test_infinite_values_reach_no_sink(caplog):
    flaky = FlakyDurableSink(failures=0)
    frame = pd.DataFrame({"symbol": ["A", "B"], "zscore": [np.inf, 1.0], "burst": [-np.inf, np.nan],
                          "votes": [1, 2]})
    sinks = Sinks([flaky])
    with caplog.at_level(logging.WARNING):
        sinks.write(frame)
    got = flaky.delivered[0]
    assert got["zscore"].isna().tolist() == [True, False] and got["burst"].isna().all()
    assert sinks.non_finite == 2 and "2 infinite value(s) in zscore, burst sent as null" in caplog.text


def test_records_are_plain_python_with_nan_as_none():
    frame = pd.DataFrame({"open_time": np.array([1, 2], dtype="int64"), "zscore": [np.nan, 1.5],
                          "is_anomaly": [True, False], "at": pd.to_datetime([0, 1000], unit="ms")})
    records = to_records(frame)
    assert records == [{"open_time": 1, "zscore": None, "is_anomaly": True, "at": 0},
                       {"open_time": 2, "zscore": 1.5, "is_anomaly": False, "at": 1000}]
    assert type(records[0]["open_time"]) is int and not any(isinstance(v, float) and math.isnan(v)
                                                             for r in records for v in r.values())


def test_confidence_levels_at_least():
    assert levels_at_least("medium") == ["MEDIUM", "HIGH"]


def test_the_console_mode_table_of_earlier_configurations_means_all():
    assert sink_options(parse("--console", "table")).console == "all"
