"""Webhook alerts: one alert per episode, updates at most once per cooldown, never blocking the stream.

Episodes, per symbol and in market time (candle ``open_time``, so a replay or the
accelerated simulator groups them as live trading would):

- an anomaly at or above ``min_confidence`` with no episode open sends an **alert** at once
  and opens an episode;
- further anomalies within ``cooldown`` of the previous one extend the episode and are
  summarised: an **update** (how many, peak confidence, the latest reasons) goes out at most
  once per ``cooldown``, and a last one when the episode ends (``cooldown`` without anomaly).

Replays and restarts do not alert twice: per symbol, anomalies at or before the latest one
already taken into an episode are ignored (a micro-batch re-run after a crash carries the same
candles), and with ``state_path`` (``detect`` keeps it in its checkpoint folder) the open
episodes and those marks are saved after every batch and read back at start, so a restarted
job continues its episodes instead of opening them again.

Nor do they lose one: the state also holds an *outbox*, the messages not yet delivered. A
batch's messages go to the delivery thread only once the state holding them (and the marks
that keep them from being made again) is saved, and leave the outbox when tried; a restarted
job sends what is left. So a crash repeats a message only if it came after the receiver took it
and before the outbox was saved again; the ``json`` format carries a stable ``id`` per message
for receivers that drop repeats.

Delivery runs in a background thread fed by a bounded queue: ``write()`` only enqueues, so a
slow or dead receiver never holds up a micro-batch (when the queue is full, messages are
dropped and counted). Each POST is tried ``attempts`` times with exponential back-off on
connection errors, HTTP 429 and 5xx. Webhook URLs carry tokens: logs show them redacted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from market_anomaly.files import write_atomically
from market_anomaly.sinks.common import CONFIDENCE_LEVELS, confidence_rank, format_utc, redact_url, to_records

log = logging.getLogger(__name__)

FORMATS = ("slack", "json")
_STOP = object()


@dataclass
class Episode:
    """An open run of anomalies of one symbol."""

    started_at: int  # open_time of the anomaly that was alerted
    last_anomaly_at: int
    last_message_at: int  # open_time when the alert or the last update went out
    follow_ups: list[dict[str, object]] = field(default_factory=list)  # not yet reported


def slack_text(message: dict[str, object]) -> str:
    decision = message["decision"]
    when = format_utc(decision.get("open_time"))
    if message["type"] == "anomaly":
        details = []
        if decision.get("close") is not None:
            details.append(f"close {decision['close']:,.6g}")
        if decision.get("return_pct") is not None:
            details.append(f"return {decision['return_pct']:+.2f}%")
        if decision.get("votes") is not None:
            details.append(f"{int(decision['votes'])} votes")
        return (f":rotating_light: *{decision['symbol']}* anomaly, {decision.get('confidence')} confidence, "
                f"at {when} UTC: {decision.get('reasons') or 'no reason given'}"
                + (f" ({', '.join(details)})" if details else ""))
    return (f":repeat: *{decision['symbol']}* episode since {format_utc(message['episode_started_at'])} UTC: "
            f"{message['follow_ups']} more anomal{'y' if message['follow_ups'] == 1 else 'ies'}, "
            f"peak {message['peak_confidence']}; latest at {when} UTC: {decision.get('reasons') or '-'}"
            + (" (episode over)" if message.get("episode_over") else ""))


def webhook_body(message: dict[str, object], fmt: str) -> bytes:
    """Slack-compatible ``{"text": ...}`` or the message itself as generic JSON."""
    payload = {"text": slack_text(message)} if fmt == "slack" else message
    return json.dumps(payload, allow_nan=False, default=str).encode()


class AlertSink:
    name = "alerts"
    durable = False  # delivery runs in its own thread, with its own retries and outbox

    def __init__(self, urls: list[str], fmt: str = "slack", min_confidence: str = "MEDIUM",
                 cooldown_seconds: float = 900.0, attempts: int = 3, backoff_seconds: float = 1.0,
                 timeout_seconds: float = 5.0, queue_size: int = 1000, state_path: Path | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"webhook format must be one of {FORMATS}, not {fmt!r}")
        if str(min_confidence).upper() not in CONFIDENCE_LEVELS:
            raise ValueError(f"minimum confidence must be one of {CONFIDENCE_LEVELS}, not {min_confidence!r}")
        self.urls = list(urls)
        self.fmt = fmt
        self.min_rank = confidence_rank(min_confidence)
        self.cooldown_ms = int(cooldown_seconds * 1000)
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.state_path = Path(state_path) if state_path else None
        self.episodes: dict[str, Episode] = {}
        self.taken_until: dict[str, int] = {}  # per symbol, open_time of the latest anomaly taken into an episode
        self.outbox: dict[str, dict[str, object]] = {}  # by id: messages made but not yet tried
        self._made: list[dict[str, object]] = []  # this batch's messages, released once the state is saved
        self._lock = threading.Lock()  # the delivery thread saves the state too
        self._load_state()
        self.counts = {"queued": 0, "delivered": 0, "failed": 0, "dropped": 0}
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._deliver_forever, name="webhook-alerts", daemon=True)
        self._worker.start()
        log.info("alerts: %s webhook(s) %s, format %s, min confidence %s, cooldown %.0fs",
                 len(self.urls), ", ".join(redact_url(url) for url in self.urls), fmt,
                 CONFIDENCE_LEVELS[self.min_rank], cooldown_seconds)
        if self.outbox:
            log.info("alerts: sending %d message(s) left undelivered by the previous run", len(self.outbox))
            self._release(list(self.outbox.values()))

    # -- episodes (the stream's thread) ----------------------------------------------------------

    def write(self, decisions: pd.DataFrame) -> None:
        records = sorted(to_records(decisions), key=lambda record: record.get("open_time") or 0)
        latest: dict[str, int] = {}
        with self._lock:
            for record in records:
                symbol, open_time = str(record.get("symbol")), int(record.get("open_time") or 0)
                latest[symbol] = max(latest.get(symbol, open_time), open_time)
                if (record.get("is_anomaly") and confidence_rank(record.get("confidence")) >= self.min_rank
                        and open_time > self.taken_until.get(symbol, -1)):  # not a replay of one already taken
                    self.taken_until[symbol] = open_time
                    self._on_anomaly(symbol, open_time, record)
            for symbol, open_time in latest.items():
                self._maybe_update(symbol, open_time)
            made, self._made = self._made, []
            self.outbox.update((message["id"], message) for message in made)
            try:
                self._save_state()
            except (OSError, ValueError) as error:  # alerts still go out; only a restart's memory of them is at risk
                log.error("alerts: cannot save the episode state %s (%s); a restart may repeat or miss alerts",
                          self.state_path, error)
        self._release(made)

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            state = json.loads(self.state_path.read_text())
            self.episodes = {symbol: Episode(**fields) for symbol, fields in state["episodes"].items()}
            self.taken_until = {symbol: int(open_time) for symbol, open_time in state["taken_until"].items()}
            self.outbox = {message["id"]: message for message in state.get("outbox", [])}
        except (OSError, ValueError, TypeError, KeyError) as error:
            log.error("alerts: cannot read the episode state %s (%s); starting without it, so open episodes may "
                      "alert again", self.state_path, error)
            return
        log.info("alerts: %d open episode(s) restored from %s", len(self.episodes), self.state_path)

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        state = {"episodes": {symbol: dataclasses.asdict(episode) for symbol, episode in self.episodes.items()},
                 "taken_until": self.taken_until, "outbox": list(self.outbox.values())}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state_path, lambda handle: handle.write(json.dumps(state, allow_nan=False,
                                                                                 default=str).encode()))

    def _on_anomaly(self, symbol: str, open_time: int, record: dict[str, object]) -> None:
        episode = self.episodes.get(symbol)
        if episode is not None and open_time - episode.last_anomaly_at <= self.cooldown_ms:
            episode.last_anomaly_at = open_time
            episode.follow_ups.append(record)
            return
        if episode is not None and episode.follow_ups:
            self._send_update(episode, over=True)
        self.episodes[symbol] = Episode(started_at=open_time, last_anomaly_at=open_time, last_message_at=open_time)
        self._made.append({"id": f"{symbol}-{open_time}-anomaly", "type": "anomaly", "symbol": symbol,
                           "decision": record})

    def _maybe_update(self, symbol: str, now: int) -> None:
        """Report follow-ups once per cooldown, and the rest when the episode ends."""
        episode = self.episodes.get(symbol)
        if episode is None:
            return
        over = now - episode.last_anomaly_at > self.cooldown_ms
        if episode.follow_ups and (over or now - episode.last_message_at >= self.cooldown_ms):
            self._send_update(episode, over=over)
            episode.last_message_at = now
        if over:
            del self.episodes[symbol]

    def _send_update(self, episode: Episode, over: bool) -> None:
        follow_ups, episode.follow_ups = episode.follow_ups, []
        latest = follow_ups[-1]
        peak = max(follow_ups, key=lambda record: confidence_rank(record.get("confidence")))
        self._made.append({
            "id": f"{latest.get('symbol')}-{latest.get('open_time')}-update",
            "type": "update", "symbol": latest.get("symbol"), "decision": latest,
            "follow_ups": len(follow_ups), "peak_confidence": peak.get("confidence"),
            "episode_started_at": episode.started_at, "episode_over": over,
        })

    def _release(self, messages: list[dict[str, object]]) -> None:
        """To the delivery thread (called once the state holding ``messages`` is saved)."""
        for message in messages:
            try:
                self._queue.put_nowait(message)
                self.counts["queued"] += 1
            except queue.Full:
                self.counts["dropped"] += 1
                log.error("alerts: queue full (receivers too slow); dropped a %s for %s (%d dropped so far)",
                          message["type"], message["symbol"], self.counts["dropped"])
                self._tried(message)

    # -- delivery (the background thread) --------------------------------------------------------

    def _deliver_forever(self) -> None:
        while (message := self._queue.get()) is not _STOP:
            try:
                body = webhook_body(message, self.fmt)
                for url in self.urls:
                    self._deliver(url, body)
            except Exception:  # a bug in one message must not silence every later alert
                log.exception("alerts: could not send a %s for %s", message["type"], message["symbol"])
            finally:
                self._tried(message)
                self._queue.task_done()
        self._queue.task_done()

    def _tried(self, message: dict[str, object]) -> None:
        """Out of the outbox: delivered, or given up on and logged."""
        with self._lock:
            if self.outbox.pop(str(message["id"]), None) is not None:
                try:
                    self._save_state()
                except (OSError, ValueError) as error:
                    log.error("alerts: cannot save the episode state %s (%s)", self.state_path, error)

    def _deliver(self, url: str, body: bytes) -> bool:
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    response.read()
                self.counts["delivered"] += 1
                return True
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code}"
                if error.code != 429 and error.code < 500:
                    break  # the receiver rejects this message; repeating it will not help
            except (urllib.error.URLError, OSError) as error:  # refused, unreachable, timed out
                problem = str(getattr(error, "reason", error))
        self.counts["failed"] += 1
        log.error("alerts: delivery to %s failed after %d attempt(s) (%s); %d failed, %d delivered so far",
                  redact_url(url), attempt + 1, problem, self.counts["failed"], self.counts["delivered"])
        return False

    def wait_delivered(self, timeout: float) -> bool:
        """Block until every queued message was tried (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def flush(self) -> None:
        """Nothing to wait for: ``write`` has saved the batch's messages in the outbox and queued them."""

    def close(self, timeout: float = 10.0) -> None:
        """Give queued alerts ``timeout`` seconds to go out, then stop the worker."""
        if not self.wait_delivered(timeout):
            log.error("alerts: %d message(s) still queued at shutdown%s", self._queue.qsize(),
                      "; the next start sends them" if self.state_path else "")
        try:
            self._queue.put(_STOP, timeout=1.0)
        except queue.Full:
            return  # the worker is a daemon thread: it dies with the process
        self._worker.join(timeout=1.0)
