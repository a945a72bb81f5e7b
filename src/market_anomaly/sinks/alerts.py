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

Nor do they lose one. Every webhook has an *outbox*, its messages not yet delivered, in the
state file too. A batch's messages enter the outboxes together with the marks that keep them
from being made again, in one save; a delivery thread per webhook sends its outbox in order and
takes a message out (and saves) only once the receiver accepted it. A receiver that is down
(connection errors, timeouts, HTTP 408, 429 and 5xx) gets the same message again with
exponential back-off (``backoff_seconds`` doubling up to ``max_backoff_seconds``, Retry-After
honoured) for as long as it takes: nothing is dropped for an outage, and a restarted job sends
what is left. Only a receiver that rejects a message (another 4xx) loses that one, with an
ERROR line. Each outbox is bounded (``outbox_size``); when one is full the oldest update, else
the oldest alert, makes room, counted and logged. So a message is delivered once per webhook;
a crash can repeat one only between the receiver taking it and the next save, and the ``json``
format carries a stable ``id`` for receivers that drop repeats.

``write()`` only appends to the outboxes, so a slow or dead receiver never holds up a
micro-batch. Webhook URLs carry tokens: they must be http(s) URLs (checked at start, with the
token kept out of the error), and logs show them redacted. Symbols and reasons are escaped for
Slack (``&``, ``<``, ``>``: no ``<!channel>`` from the data) and stripped of control characters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from market_anomaly import metrics
from market_anomaly.config import redact_url, register_secret
from market_anomaly.files import write_atomically
from market_anomaly.sinks.common import CONFIDENCE_LEVELS, confidence_rank, format_utc, printable, to_records

log = logging.getLogger(__name__)

FORMATS = ("slack", "json")
RETRY_AFTER_LIMIT = 600.0  # seconds: a receiver's Retry-After beyond this is taken as this


@dataclass
class Episode:
    """An open run of anomalies of one symbol."""

    started_at: int  # open_time of the anomaly that was alerted
    last_anomaly_at: int
    last_message_at: int  # open_time when the alert or the last update went out
    follow_ups: list[dict[str, object]] = field(default_factory=list)  # not yet reported


def validate_webhook_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; else ValueError naming it without its token."""
    try:
        parts = urlsplit(url.strip())
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"webhook URL {redact_url(url)!r} is not an http:// or https:// URL with a host")
    return url.strip()


def slack_escape(value: object) -> str:
    """Text from the data for Slack: control characters visible, ``&<>`` escaped (so no ``<!channel>``)."""
    return printable(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(message: dict[str, object]) -> str:
    decision = message["decision"]
    when = format_utc(decision.get("open_time"))
    symbol, reasons = slack_escape(decision["symbol"]), slack_escape(decision.get("reasons") or "")
    if message["type"] == "anomaly":
        details = []
        if decision.get("close") is not None:
            details.append(f"close {decision['close']:,.6g}")
        if decision.get("return_pct") is not None:
            details.append(f"return {decision['return_pct']:+.2f}%")
        if decision.get("votes") is not None:
            details.append(f"{int(decision['votes'])} votes")
        return (f":rotating_light: *{symbol}* anomaly, {slack_escape(decision.get('confidence'))} confidence, "
                f"at {when} UTC: {reasons or 'no reason given'}"
                + (f" ({', '.join(details)})" if details else ""))
    return (f":repeat: *{symbol}* episode since {format_utc(message['episode_started_at'])} UTC: "
            f"{message['follow_ups']} more anomal{'y' if message['follow_ups'] == 1 else 'ies'}, "
            f"peak {slack_escape(message['peak_confidence'])}; latest at {when} UTC: {reasons or '-'}"
            + (" (episode over)" if message.get("episode_over") else ""))


def finite(value: object) -> object:
    """``value`` with non-finite floats (which JSON cannot carry) as None, in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def webhook_body(message: dict[str, object], fmt: str) -> bytes:
    """Slack-compatible ``{"text": ...}`` or the message itself as generic JSON."""
    payload = {"text": slack_text(message)} if fmt == "slack" else finite(message)
    return json.dumps(payload, allow_nan=False, default=str).encode()


def webhook_key(url: str) -> str:
    """A webhook's name in the state file: a digest, so the file holds no token."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class Webhook:
    """One receiver: its outbox (oldest first) and its delivery thread's back-off."""

    def __init__(self, url: str):
        self.url = url
        self.key = webhook_key(url)
        self.shown = redact_url(url)
        self.outbox: deque[dict[str, object]] = deque()
        self.failures = 0  # consecutive failed attempts of the head message
        self.thread: threading.Thread | None = None


class AlertSink:
    name = "alerts"
    durable = False  # delivery runs in its own thread, with its own retries and outbox

    def __init__(self, urls: list[str], fmt: str = "slack", min_confidence: str = "MEDIUM",
                 cooldown_seconds: float = 900.0, backoff_seconds: float = 1.0, max_backoff_seconds: float = 60.0,
                 timeout_seconds: float = 5.0, outbox_size: int = 10_000, state_path: Path | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"webhook format must be one of {FORMATS}, not {fmt!r}")
        if str(min_confidence).upper() not in CONFIDENCE_LEVELS:
            raise ValueError(f"minimum confidence must be one of {CONFIDENCE_LEVELS}, not {min_confidence!r}")
        self.webhooks = [Webhook(validate_webhook_url(url)) for url in dict.fromkeys(urls)]
        for webhook in self.webhooks:
            register_secret(webhook.url, webhook.shown)  # wherever a log line would quote it
        self.fmt = fmt
        self.min_rank = confidence_rank(min_confidence)
        self.cooldown_ms = int(cooldown_seconds * 1000)
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.outbox_size = outbox_size
        self.state_path = Path(state_path) if state_path else None
        self.episodes: dict[str, Episode] = {}
        self.taken_until: dict[str, int] = {}  # per symbol, open_time of the latest anomaly taken into an episode
        self._made: list[dict[str, object]] = []  # this batch's messages, into the outboxes with the state's save
        self._lock = threading.Condition()  # guards episodes, marks and outboxes; wakes the delivery threads
        self._stopping = threading.Event()
        self.counts = {"delivered": 0, "failed": 0, "rejected": 0, "dropped": 0}
        self._load_state()
        log.info("alerts: %s webhook(s) %s, format %s, min confidence %s, cooldown %.0fs", len(self.webhooks),
                 ", ".join(webhook.shown for webhook in self.webhooks), fmt, CONFIDENCE_LEVELS[self.min_rank],
                 cooldown_seconds)
        waiting = self.waiting()
        if waiting:
            log.info("alerts: sending %d message(s) left undelivered by the previous run", waiting)
        for webhook in self.webhooks:
            webhook.thread = threading.Thread(target=self._deliver_forever, args=(webhook,), daemon=True,
                                              name=f"webhook-alerts-{webhook.key[:6]}")
            webhook.thread.start()

    @property
    def urls(self) -> list[str]:
        return [webhook.url for webhook in self.webhooks]

    def waiting(self) -> int:
        """Messages not yet delivered, over all webhooks."""
        return sum(len(webhook.outbox) for webhook in self.webhooks)

    # -- episodes (the stream's thread) ----------------------------------------------------------

    def write(self, decisions: pd.DataFrame) -> list[dict[str, object]]:
        """Take the decisions into episodes; the messages made (alerts and updates), queued for every webhook."""
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
            for webhook in self.webhooks:
                for message in made:
                    self._enqueue(webhook, message)
            self._saved("the new alerts still go out; a restart may repeat or miss them")
            self._lock.notify_all()
        return made

    def _enqueue(self, webhook: Webhook, message: dict[str, object]) -> None:
        if len(webhook.outbox) >= self.outbox_size:
            updates = [queued for queued in webhook.outbox if queued["type"] == "update"]
            victim = updates[0] if updates else webhook.outbox[0]
            webhook.outbox.remove(victim)
            self.counts["dropped"] += 1
            metrics.ALERTS_DROPPED.labels(reason="outbox_full").inc()
            log.error("alerts: the outbox of %s is full (%d messages); dropped its oldest %s (%s) to make room",
                      webhook.shown, self.outbox_size, victim["type"], victim["id"])
        webhook.outbox.append(message)
        metrics.ALERT_OUTBOX.set(self.waiting())

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            state = json.loads(self.state_path.read_text())
            episodes = {symbol: Episode(**fields) for symbol, fields in state["episodes"].items()}
            taken_until = {symbol: int(open_time) for symbol, open_time in state["taken_until"].items()}
            outboxes = state.get("outboxes", {})
            shared = state.get("outbox", [])  # the format before per-webhook outboxes: every webhook's
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            log.error("alerts: cannot read the episode state %s (%s); starting without it, so open episodes may "
                      "alert again", self.state_path, error)
            return
        self.episodes, self.taken_until = episodes, taken_until
        for webhook in self.webhooks:
            webhook.outbox.extend(outboxes.pop(webhook.key, []))
        # A webhook no longer configured (a rotated token, the old format's shared outbox): its messages go to
        # every current webhook that does not hold them, rather than nowhere.
        orphans = {message["id"]: message for messages in [shared, *outboxes.values()] for message in messages}
        for webhook in self.webhooks:
            held = {message["id"] for message in webhook.outbox}
            webhook.outbox.extend(message for key, message in orphans.items() if key not in held)
        if orphans:
            log.info("alerts: %d undelivered message(s) of webhooks no longer configured go to the current ones",
                     len(orphans))
        metrics.ALERT_OUTBOX.set(self.waiting())
        log.info("alerts: %d open episode(s) restored from %s", len(self.episodes), self.state_path)

    def _saved(self, consequence: str) -> None:
        """Save the episodes, marks and outboxes (under the lock); a failure is logged with its ``consequence``."""
        if self.state_path is None:
            return
        state = {"episodes": {symbol: dataclasses.asdict(episode) for symbol, episode in self.episodes.items()},
                 "taken_until": self.taken_until,
                 "outboxes": {webhook.key: list(webhook.outbox) for webhook in self.webhooks}}
        try:
            body = json.dumps(finite(state), allow_nan=False, default=str).encode()
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.state_path, lambda handle: handle.write(body))
        except (OSError, ValueError) as error:
            log.error("alerts: cannot save the episode state %s (%s); %s", self.state_path, error, consequence)

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

    # -- delivery (one thread per webhook) -------------------------------------------------------

    def _deliver_forever(self, webhook: Webhook) -> None:
        while True:
            with self._lock:
                while not webhook.outbox and not self._stopping.is_set():
                    self._lock.wait()
                if self._stopping.is_set():
                    return
                message = webhook.outbox[0]
            outcome, delay = self._post(webhook, message)
            if outcome == "retry":
                self._stopping.wait(delay)
                continue
            with self._lock:
                if webhook.outbox and webhook.outbox[0] is message:
                    webhook.outbox.popleft()
                metrics.ALERT_OUTBOX.set(self.waiting())
                self._saved("a restart may send this message again")
                self._lock.notify_all()

    def _post(self, webhook: Webhook, message: dict[str, object]) -> tuple[str, float]:
        """One attempt: ``("delivered" | "rejected" | "retry", seconds to wait before the retry)``."""
        retry_after = None
        try:
            body = webhook_body(message, self.fmt)
            request = urllib.request.Request(webhook.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                response.read()
        except urllib.error.HTTPError as error:
            problem = f"HTTP {error.code}"
            if error.code not in (408, 429) and error.code < 500:
                return self._rejected(webhook, message, problem)
            retry_after = error.headers.get("Retry-After", "") if error.headers else ""
            retry_after = min(float(retry_after), RETRY_AFTER_LIMIT) if retry_after.isdigit() else None
        except (urllib.error.URLError, OSError) as error:  # refused, unreachable, timed out
            problem = str(getattr(error, "reason", error))
        except (TypeError, ValueError) as error:  # a message that cannot be encoded: retrying will not help
            return self._rejected(webhook, message, f"cannot encode it: {error}")
        else:
            if webhook.failures:
                log.info("alerts: %s answers again after %d failed attempt(s); %d message(s) waiting", webhook.shown,
                         webhook.failures, len(webhook.outbox))
            webhook.failures = 0
            self.counts["delivered"] += 1
            metrics.ALERTS_DELIVERED.labels(type=str(message["type"])).inc()
            return "delivered", 0.0
        if self._stopping.is_set():
            return "retry", 0.0  # closed while this attempt was under way: the state file keeps the message
        webhook.failures += 1
        self.counts["failed"] += 1
        metrics.ALERT_DELIVERY_FAILURES.inc()
        backoff = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (webhook.failures - 1))
        delay = max(retry_after or 0.0, backoff * random.uniform(0.8, 1.0))
        if webhook.failures & (webhook.failures - 1) == 0:  # the 1st, 2nd, 4th, 8th... failure: a log that stays short
            (log.error if webhook.failures == 1 else log.warning)(
                "alerts: delivery to %s failed (%s), attempt %d; retrying in %.1fs until it succeeds, %d message(s) "
                "waiting", webhook.shown, problem, webhook.failures, delay, len(webhook.outbox))
        return "retry", delay

    def _rejected(self, webhook: Webhook, message: dict[str, object], problem: str) -> tuple[str, float]:
        webhook.failures = 0
        self.counts["rejected"] += 1
        metrics.ALERTS_DROPPED.labels(reason="rejected").inc()
        log.error("alerts: %s rejected the %s %s (%s); not retried", webhook.shown, message["type"], message["id"],
                  problem)
        return "rejected", 0.0

    def wait_delivered(self, timeout: float) -> bool:
        """Block until every outbox is empty (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.waiting():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.1))
        return True

    def flush(self) -> None:
        """Nothing to wait for: ``write`` has saved the batch's messages in the outbox and queued them."""

    def close(self, timeout: float = 10.0) -> None:
        """Give waiting alerts ``timeout`` seconds to go out, then stop; what is left stays in the state file."""
        if not self.wait_delivered(timeout):
            log.error("alerts: %d message(s) still undelivered at shutdown%s", self.waiting(),
                      "; the next start sends them" if self.state_path else "")
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        for webhook in self.webhooks:
            if webhook.thread is not None:
                webhook.thread.join(timeout=1.0)  # a thread inside a POST is a daemon: it dies with the process
