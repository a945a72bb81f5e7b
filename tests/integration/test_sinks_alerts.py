"""Webhook alerts against a local HTTP receiver: formats, episodes and cooldown, an outage, a dead receiver."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from market_anomaly.sinks.alerts import AlertSink

pytestmark = pytest.mark.integration

MINUTE = 60


class Receiver:
    """An HTTP server recording POSTed JSON; answers ``status`` for the first ``failures`` POSTs (or for
    ``down_for`` seconds after the first POST), then 200s."""

    def __init__(self, failures: int = 0, delay: float = 0.0, down_for: float = 0.0, status: int = 500):
        self.bodies: list[object] = []
        self.paths: list[str] = []
        self.attempts = 0
        self.first_attempt: float | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                receiver.attempts += 1
                receiver.first_attempt = receiver.first_attempt or time.monotonic()
                if receiver.attempts <= failures or time.monotonic() - receiver.first_attempt < down_for:
                    self.send_response(status)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                receiver.paths.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/s3cr3t-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def sink_for(url: str, **options) -> AlertSink:
    return AlertSink([url], **{"backoff_seconds": 0.05, "max_backoff_seconds": 0.4, "cooldown_seconds": 15 * MINUTE,
                               **options})


def test_slack_format_one_alert_per_episode(receiver, make_decision):
    sink = sink_for(receiver.url)
    sink.write(pd.DataFrame([
        make_decision("BTCUSDT", 0, 90_000.0),
        make_decision("BTCUSDT", 1, 92_350.5, True, "HIGH", "Z-SCORE 7.2σ | VOLUME 14x", return_pct=2.61),
        make_decision("BTCUSDT", 3, 92_500.0, True, "MEDIUM", "VOLUME 9x"),  # same episode: no second alert
    ]))
    assert sink.wait_delivered(5)
    assert len(receiver.bodies) == 1
    assert receiver.paths == ["/services/T000/B000/s3cr3t-token"]
    text = receiver.bodies[0]["text"]
    assert text.startswith(":rotating_light: *BTCUSDT* anomaly, HIGH confidence, at 2026-01-24 20:18 UTC: "
                           "Z-SCORE 7.2σ | VOLUME 14x")
    assert "return +2.61%" in text and "3 votes" in text
    sink.close()


def test_follow_ups_are_summarised_once_per_cooldown_and_at_episode_end(receiver, make_decision):
    sink = sink_for(receiver.url, fmt="json")
    sink.write(pd.DataFrame([make_decision("ETHUSDT", m, 3_000.0 + m, m in (0, 5, 10), "HIGH" if m == 10 else "MEDIUM",
                                           f"VOLUME {m}x") for m in range(12)]))
    sink.write(pd.DataFrame([make_decision("ETHUSDT", 15, 3_015.0)]))  # 15 min after the alert: one update
    sink.write(pd.DataFrame([make_decision("ETHUSDT", 20, 3_020.0, True, "MEDIUM", "VOLUME 3x")]))  # in episode
    sink.write(pd.DataFrame([make_decision("ETHUSDT", 40, 3_040.0)]))  # 20 quiet minutes: the episode is over
    sink.write(pd.DataFrame([make_decision("ETHUSDT", 41, 3_041.0, True, "MEDIUM", "VOLUME 12x")]))  # new episode
    assert sink.wait_delivered(5)
    kinds = [(body["type"], body["decision"]["open_time"], body.get("follow_ups")) for body in receiver.bodies]
    start = make_decision("ETHUSDT", 0, 1.0)["open_time"]
    assert kinds == [("anomaly", start, None), ("update", start + 10 * 60_000, 2),
                     ("update", start + 20 * 60_000, 1), ("anomaly", start + 41 * 60_000, None)]
    first_update = receiver.bodies[1]
    assert first_update["peak_confidence"] == "HIGH" and first_update["episode_over"] is False
    assert first_update["episode_started_at"] == start and first_update["decision"]["reasons"] == "VOLUME 10x"
    assert receiver.bodies[2]["episode_over"] is True
    assert receiver.bodies[0]["decision"]["symbol"] == "ETHUSDT" and receiver.bodies[0]["decision"]["close"] == 3000.0
    sink.close()


def test_a_replayed_batch_and_a_restarted_sink_do_not_alert_twice(receiver, make_decision, tmp_path, caplog):
    state = tmp_path / "checkpoint" / "market-anomaly" / "alert-episodes.json"
    batch = pd.DataFrame([make_decision("BTCUSDT", 1, 1.0, True, "HIGH", "Z-SCORE 8σ"),
                          make_decision("BTCUSDT", 3, 1.0, True, "MEDIUM", "VOLUME 9x")])
    first = sink_for(receiver.url, fmt="json", state_path=state)
    first.write(batch)
    first.write(batch)  # the same micro-batch again (a task retry)
    assert first.wait_delivered(5)
    first.close()
    restarted = sink_for(receiver.url, fmt="json", state_path=state)
    restarted.write(batch)  # re-run after a crash: Spark had not committed it
    restarted.write(pd.DataFrame([make_decision("BTCUSDT", 5, 1.0, True, "MEDIUM", "VOLUME 11x")]))  # same episode
    restarted.write(pd.DataFrame([make_decision("BTCUSDT", 30, 1.0)]))  # quiet: the episode ends
    assert restarted.wait_delivered(5)
    sent = [(body["type"], body.get("follow_ups"), body.get("episode_over")) for body in receiver.bodies]
    assert sent == [("anomaly", None, None), ("update", 2, True)]  # minutes 3 and 5, across the restart
    restarted.close()
    state.write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="market_anomaly.sinks.alerts"):
        unreadable = sink_for(receiver.url, state_path=state)
    assert "cannot read the episode state" in caplog.text and unreadable.episodes == {}
    unreadable.close()


def test_what_a_crashed_run_had_not_delivered_goes_out_once_after_the_restart(receiver, make_decision, tmp_path):
    state = tmp_path / "alert-episodes.json"
    silent = socket.socket()  # the first run's receiver accepts and never answers: its alert is never delivered
    silent.bind(("127.0.0.1", 0))
    silent.listen(10)
    batch = pd.DataFrame([make_decision("BTCUSDT", 1, 1.0, True, "HIGH", "Z-SCORE 8σ")])
    crashed = sink_for(f"http://127.0.0.1:{silent.getsockname()[1]}/hook", fmt="json", state_path=state,
                       timeout_seconds=30)
    crashed.write(batch)
    assert [message["id"] for outbox in json.loads(state.read_text())["outboxes"].values() for message in outbox] == [
        f"BTCUSDT-{batch['open_time'].iat[0]}-anomaly"]  # saved before it went to the delivery thread
    # The job dies here (the crashed sink is never closed); the restarted one has the real receiver.
    restarted = sink_for(receiver.url, fmt="json", state_path=state)
    restarted.write(batch)  # Spark re-runs the uncommitted batch: the mark keeps it from alerting again
    assert restarted.wait_delivered(5)
    assert [(body["id"], body["type"]) for body in receiver.bodies] == [
        (f"BTCUSDT-{batch['open_time'].iat[0]}-anomaly", "anomaly")]
    assert list(json.loads(state.read_text())["outboxes"].values()) == [[]]  # delivered: not sent again later
    restarted.close()
    again = sink_for(receiver.url, fmt="json", state_path=state)
    assert again.wait_delivered(5) and len(receiver.bodies) == 1
    again.close()
    crashed.close(timeout=0)
    silent.close()


def test_symbols_have_separate_cooldowns_and_min_confidence_filters(receiver, make_decision):
    sink = sink_for(receiver.url, fmt="json", min_confidence="HIGH")
    sink.write(pd.DataFrame([
        make_decision("BTCUSDT", 0, 1.0, True, "MEDIUM", "VOLUME 5x"),  # below the minimum: ignored
        make_decision("BTCUSDT", 1, 1.0, True, "HIGH", "Z-SCORE 8σ"),
        make_decision("SOLUSDT", 1, 1.0, True, "HIGH", "Z-SCORE 9σ"),
    ]))
    assert sink.wait_delivered(5)
    assert sorted((b["symbol"], b["decision"]["confidence"]) for b in receiver.bodies) == [
        ("BTCUSDT", "HIGH"), ("SOLUSDT", "HIGH")]
    sink.close()


def crash(make_decision, symbols: int, minutes: range) -> list[pd.DataFrame]:
    """A market-wide crash as the job hands it over: one batch per minute, every symbol anomalous in it."""
    return [pd.DataFrame([make_decision(f"S{index:02d}USDT", minute, 100.0 - minute, True,
                                        "HIGH" if minute % 2 else "MEDIUM", f"FLASH {minute}σ | MARKET 20/20")
                          for index in range(symbols)]) for minute in minutes]


def test_an_outage_delays_alerts_but_drops_none_and_repeats_none(make_decision, caplog):
    """The receiver answers 500 for 3 s while 20 symbols crash (episodes of 40 minutes: alerts, then updates)."""
    down = Receiver(down_for=3.0)
    sink = sink_for(down.url, fmt="json", cooldown_seconds=10 * MINUTE)
    with caplog.at_level(logging.INFO, logger="market_anomaly.sinks.alerts"):
        for batch in crash(make_decision, 20, range(0, 40)):
            sink.write(batch)
        sink.write(pd.DataFrame([make_decision(f"S{index:02d}USDT", 60, 50.0) for index in range(20)]))  # calm
        assert sink.wait_delivered(30), f"{sink.waiting()} still waiting"
    ids = [body["id"] for body in down.bodies]
    assert len(ids) == len(set(ids)), "an alert was delivered twice"
    alerts = {body["symbol"] for body in down.bodies if body["type"] == "anomaly"}
    assert alerts == {f"S{index:02d}USDT" for index in range(20)}  # every symbol's episode was alerted
    updates = [body for body in down.bodies if body["type"] == "update"]
    assert sum(body["follow_ups"] for body in updates) == 20 * 39  # every later anomaly reported, once
    assert sink.counts["failed"] >= 2 and sink.counts["dropped"] == sink.counts["rejected"] == 0
    outage_lines = [record for record in caplog.records if "retrying in" in record.getMessage()]
    assert 2 <= len(outage_lines) <= 8  # the 1st, 2nd, 4th... failure: the log says it, without flooding
    assert "s3cr3t" not in caplog.text and "answers again after" in caplog.text
    sink.close()
    down.close()


def test_undelivered_alerts_survive_a_restart_during_an_outage(make_decision, tmp_path):
    state = tmp_path / "alert-episodes.json"
    down = Receiver(down_for=3600)
    first = sink_for(down.url, fmt="json", state_path=state)
    for batch in crash(make_decision, 5, range(0, 3)):
        first.write(batch)
    assert not first.wait_delivered(1.0)
    first.close(timeout=0)
    assert down.bodies == []
    again = sink_for(down.url, fmt="json", state_path=state)
    assert again.waiting() == 5  # the five symbols' alerts (their follow-ups wait in the open episodes)
    again.close(timeout=0)
    down.close()
    receiver = Receiver()  # the receiver moved (say, a rotated token): what the old URL had goes to the new one
    restarted = sink_for(receiver.url, fmt="json", state_path=state)
    assert restarted.wait_delivered(5)
    assert sorted(body["id"] for body in receiver.bodies) == sorted(
        f"S{index:02d}USDT-{make_decision('X', 0, 1.0)['open_time']}-anomaly" for index in range(5))
    restarted.close()
    later = sink_for(receiver.url, fmt="json", state_path=state)
    assert later.waiting() == 0 and len(receiver.bodies) == 5
    later.close()
    receiver.close()


def test_a_receiver_that_rejects_a_message_loses_only_that_one(make_decision, caplog):
    rejecting = Receiver(failures=1, status=400)
    sink = sink_for(rejecting.url, fmt="json")
    with caplog.at_level(logging.ERROR, logger="market_anomaly.sinks.alerts"):
        sink.write(pd.DataFrame([make_decision("BTCUSDT", 0, 1.0, True, "HIGH", "Z-SCORE 8σ"),
                                 make_decision("ETHUSDT", 0, 1.0, True, "HIGH", "Z-SCORE 9σ")]))
        assert sink.wait_delivered(5)
    assert [body["symbol"] for body in rejecting.bodies] == ["ETHUSDT"]
    assert sink.counts["rejected"] == 1 and "rejected the anomaly BTCUSDT-" in caplog.text
    sink.close()
    rejecting.close()


def test_a_full_outbox_makes_room_with_its_oldest_update_first(make_decision):
    silent = socket.socket()  # accepts and never answers: nothing leaves the outbox
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)
    sink = AlertSink([f"http://127.0.0.1:{silent.getsockname()[1]}/hook"], fmt="json", timeout_seconds=30,
                     outbox_size=4, cooldown_seconds=60)
    sink.write(pd.DataFrame([make_decision("BTCUSDT", minute, 1.0, True, "HIGH", "Z-SCORE 8σ")
                             for minute in (0, 1)]))  # an alert, then a follow-up
    sink.write(pd.DataFrame([make_decision("BTCUSDT", 3, 1.0)]))  # the episode ends: an update
    for minute in (10, 20, 30):
        sink.write(pd.DataFrame([make_decision("BTCUSDT", minute, 1.0, True, "HIGH", "Z-SCORE 8σ")]))
    outbox = [message["type"] for message in sink.webhooks[0].outbox]
    assert outbox == ["anomaly", "anomaly", "anomaly", "anomaly"] and sink.counts["dropped"] == 1
    sink.close(timeout=0)
    silent.close()


def test_a_dead_receiver_never_blocks_write(make_decision):
    # A socket that accepts connections and never answers: each POST waits for its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)
    sink = AlertSink([f"http://127.0.0.1:{silent.getsockname()[1]}/hook"], timeout_seconds=5, backoff_seconds=0.1)
    started = time.monotonic()
    for minute in range(0, 400, 20):  # 20 separate episodes
        sink.write(pd.DataFrame([make_decision("BTCUSDT", minute, 1.0, True, "HIGH", "Z-SCORE 8σ")]))
    assert time.monotonic() - started < 2.0  # one POST alone would wait 5 s
    assert sink.waiting() >= 19  # kept, in order, for when the receiver answers
    started = time.monotonic()
    sink.close(timeout=0.2)
    assert time.monotonic() - started < 2.5
    silent.close()
