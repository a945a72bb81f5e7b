"""Prometheus metrics: every metric the processes export, defined in one place, and their endpoints.

Names follow Prometheus' conventions: the ``market_anomaly_`` namespace, then the part
(``producer``, ``detect``, ``dashboard``, ``alert``, ``sink``), units in the name
(``_seconds``, ``_records``), counters ending in ``_total`` (the client adds it), and labels
with bounded values only: sink names, confidence levels, candle sources, and dead-letter
reasons reduced to a category and capped (``reason_label``). Each process serves only its own
part (``serve(role, ...)``) plus the standard process and Python collectors.

``produce`` and ``detect`` serve ``/metrics`` with ``--metrics-port`` (env
``MARKET_ANOMALY_METRICS_PORT``; 0, the default, serves none; the flags are ``cli.options``')
on ``--metrics-host`` (default 127.0.0.1: only this machine can scrape); the dashboard serves
it on its own port.
This module is the base layer: it imports nothing from the project.
"""

from __future__ import annotations

import json
import logging
import re
import threading

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram, start_http_server)

log = logging.getLogger(__name__)

# -- producer ------------------------------------------------------------------------------------

CANDLES_PRODUCED = Counter("market_anomaly_producer_candles", "Closed candles sent to the candle topic, by "
                           "where they came from (ws: live, rest: a backfilled gap or seeded history, file: seed file)",
                           ["source"], registry=None)
PRODUCER_DELIVERY_FAILURES = Counter("market_anomaly_producer_delivery_failures",
                                     "Candles Kafka finally failed to deliver (after the producer's own retries)",
                                     registry=None)
WEBSOCKET_RECONNECTS = Counter("market_anomaly_producer_websocket_reconnects",
                               "Exchange WebSocket connections lost and reopened after a back-off",
                               registry=None)
WATCHDOG_RESUBSCRIBES = Counter("market_anomaly_producer_watchdog_resubscribes",
                                "Symbols silent for longer than the watchdog allows, resubscribed and backfilled",
                                registry=None)
SYMBOLS_DROPPED = Counter("market_anomaly_producer_symbols_dropped",
                          "Symbols unsubscribed because the exchange no longer lists them as TRADING (halt, delisting)",
                          registry=None)
SYMBOLS_ADDED = Counter("market_anomaly_producer_symbols_added",
                        "Symbols subscribed after the start because the exchange newly lists them as TRADING",
                        registry=None)
REST_RATE_LIMITED = Counter("market_anomaly_producer_rest_rate_limited",
                            "REST answers 429/418 from the exchange; every task waits out their Retry-After",
                            ["status"], registry=None)
REQUESTS_REFUSED = Counter("market_anomaly_producer_requests_refused",
                           "Requests the exchange refused for good (REST 4xx, SUBSCRIBE errors after retries)",
                           ["kind"], registry=None)
STALE_SYMBOLS = Gauge("market_anomaly_producer_stale_symbols",
                      "Watched symbols whose latest closed candle is more than one interval older than the newest "
                      "symbol's, or that have none yet", registry=None)

# -- both: every record the pipeline cannot use ---------------------------------------------------

DEAD_LETTERS = Counter("market_anomaly_dead_letters", "Records sent to the dead-letter topic, by stage and reason "
                       "category", ["stage", "reason"], registry=None)
DEAD_LETTER_FAILURES = Counter("market_anomaly_dead_letter_failures",
                               "Dead letters that could not be published (counted and logged, never fatal)",
                               ["stage"], registry=None)

# -- detect (the Spark job's driver) ---------------------------------------------------------------

INPUT_RECORDS = Counter("market_anomaly_detect_input_records", "Kafka records the streaming job read", registry=None)
CANDLES_DECIDED = Counter("market_anomaly_detect_candles_decided", "Candles the job decided and handed to the sinks",
                          registry=None)
ANOMALIES = Counter("market_anomaly_detect_anomalies", "Anomalies the job found, by confidence", ["confidence"],
                    registry=None)
BATCH_DURATION = Histogram("market_anomaly_detect_micro_batch_duration_seconds",
                           "Wall time of a micro-batch (Spark's batchDuration: read, detect, sinks, commit)",
                           buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128), registry=None)
LAST_BATCH = Gauge("market_anomaly_detect_last_batch_timestamp_seconds",
                   "When the latest micro-batch finished (Unix time): alert on time() minus this", registry=None)
STATE_BYTES = Gauge("market_anomaly_detect_state_bytes",
                    "Memory of the job's state store (every symbol's detector state) at the latest micro-batch",
                    registry=None)
CONSUMER_LAG = Gauge("market_anomaly_detect_consumer_lag_records",
                     "Per candle-topic partition: records behind the log end at the latest micro-batch",
                     ["topic", "partition"], registry=None)
SINK_FAILURES = Counter("market_anomaly_sink_failures", "Failed writes to a sink", ["sink"], registry=None)
SINK_RETRIES = Counter("market_anomaly_sink_retries", "Writes to a sink tried again after a failure", ["sink"],
                       registry=None)
ALERTS_DELIVERED = Counter("market_anomaly_alerts_delivered", "Alert messages a webhook receiver accepted, by type "
                           "(anomaly: an episode's first alert, update: its summary)", ["type"], registry=None)
ALERT_DELIVERY_FAILURES = Counter("market_anomaly_alert_delivery_failures",
                                  "Failed webhook POSTs (each is tried again with back-off unless rejected)",
                                  registry=None)
ALERTS_DROPPED = Counter("market_anomaly_alerts_dropped", "Alert messages given up on: rejected by the receiver "
                         "(HTTP 4xx) or pushed out of a full outbox", ["reason"], registry=None)
ALERT_OUTBOX = Gauge("market_anomaly_alert_outbox_messages", "Alert messages waiting for delivery (all webhooks)",
                     registry=None)

# -- dashboard -------------------------------------------------------------------------------------

DASHBOARD_REQUESTS = Histogram("market_anomaly_dashboard_request_duration_seconds",
                               "Dashboard HTTP responses by route (the page, static files, each API)",
                               ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                               registry=None)
DASHBOARD_EVENT_STREAMS = Gauge("market_anomaly_dashboard_event_streams", "Pages connected to the live event stream",
                                registry=None)
DASHBOARD_EVENTS = Counter("market_anomaly_dashboard_events_sent", "Server-sent events pushed to pages, by event",
                           ["event"], registry=None)

CONFIDENCE_LABELS = ("LOW", "MEDIUM", "HIGH")

ROLES = {
    "producer": (CANDLES_PRODUCED, PRODUCER_DELIVERY_FAILURES, WEBSOCKET_RECONNECTS, WATCHDOG_RESUBSCRIBES,
                 SYMBOLS_DROPPED, SYMBOLS_ADDED, REST_RATE_LIMITED, REQUESTS_REFUSED, STALE_SYMBOLS, DEAD_LETTERS,
                 DEAD_LETTER_FAILURES),
    "detect": (INPUT_RECORDS, CANDLES_DECIDED, ANOMALIES, BATCH_DURATION, LAST_BATCH, STATE_BYTES, CONSUMER_LAG,
               DEAD_LETTERS, DEAD_LETTER_FAILURES, SINK_FAILURES, SINK_RETRIES, ALERTS_DELIVERED, ALERT_DELIVERY_FAILURES,
               ALERTS_DROPPED, ALERT_OUTBOX),
    "dashboard": (DASHBOARD_REQUESTS, DASHBOARD_EVENT_STREAMS, DASHBOARD_EVENTS),
}


# Known label values exist from the start (at 0), so a rate() sees the first increment.
for _level in CONFIDENCE_LABELS:
    ANOMALIES.labels(confidence=_level)
for _source in ("ws", "rest", "file"):
    CANDLES_PRODUCED.labels(source=_source)
for _kind in ("anomaly", "update"):
    ALERTS_DELIVERED.labels(type=_kind)
for _reason in ("rejected", "outbox_full"):
    ALERTS_DROPPED.labels(reason=_reason)


def registry(role: str) -> CollectorRegistry:
    """The metrics ``role`` exports, with the standard process, platform and garbage-collector ones."""
    result = CollectorRegistry()
    for collector in (*ROLES[role], PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        result.register(collector)
    return result


def serve(role: str, port: int, host: str = "127.0.0.1") -> int | None:
    """Start ``role``'s ``/metrics`` endpoint in a daemon thread; returns its port (None when ``port`` is 0)."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=host, registry=registry(role))
    log.info("metrics: http://%s:%d/metrics", host, server.server_port)
    return server.server_port


# -- bounded label values --------------------------------------------------------------------------

MAX_REASONS = 30  # distinct dead-letter reason labels per process; later new ones count as "other"
_reasons: set[str] = set()
_reasons_lock = threading.Lock()


def reason_label(reason: str) -> str:
    """A dead-letter reason as a bounded label: its words before any ``:`` detail, lower case, without numbers,
    at most 60 characters; past ``MAX_REASONS`` distinct labels, ``other``."""
    words = re.sub(r"[^a-z /_-]+", " ", str(reason).split(":", 1)[0].lower())
    label = re.sub(r"\s+", " ", words).strip()[:60] or "unknown"
    with _reasons_lock:
        if label in _reasons or len(_reasons) < MAX_REASONS:
            _reasons.add(label)
            return label
    return "other"


def dead_lettered(stage: str, reason: str) -> None:
    DEAD_LETTERS.labels(stage=stage, reason=reason_label(reason)).inc()


class SymbolFreshness:
    """Which watched symbols are stale, in market time: behind the newest symbol's latest candle by more than one
    interval (the exchange stopped sending them), or without a candle yet."""

    def __init__(self, symbols: list[str], interval_ms: int):
        self.interval_ms = interval_ms
        self.latest: dict[str, int | None] = dict.fromkeys(symbols)

    def seen(self, symbol: str, open_time: int) -> None:
        if symbol in self.latest and open_time > (self.latest[symbol] or -1):
            self.latest[symbol] = open_time

    def stale(self) -> int:
        times = list(self.latest.values())
        newest = max((time for time in times if time is not None), default=None)
        if newest is None:
            return 0  # nothing arrived yet: a start, not a stall
        return sum(1 for time in times if time is None or newest - time > self.interval_ms)


_freshness: SymbolFreshness | None = None


def watch_symbols(symbols: list[str], interval_ms: int) -> None:
    """The producer's watch list: ``STALE_SYMBOLS`` counts its stale symbols at each scrape. Called again when
    discovery changes the list; symbols still watched keep their latest candle."""
    global _freshness
    previous = _freshness
    _freshness = SymbolFreshness(symbols, interval_ms)
    if previous is not None:
        for symbol, open_time in previous.latest.items():
            if open_time is not None:
                _freshness.seen(symbol, open_time)
    STALE_SYMBOLS.set_function(_freshness.stale)


def candle_produced(symbol: str, open_time: int, source: str) -> None:
    CANDLES_PRODUCED.labels(source=source).inc()
    if _freshness is not None:
        _freshness.seen(symbol, open_time)


def record_decisions(decisions) -> None:
    """A micro-batch's decisions (a frame with ``is_anomaly`` and ``confidence``): decided, and anomalies by level."""
    CANDLES_DECIDED.inc(len(decisions))
    flagged = decisions["confidence"][decisions["is_anomaly"].astype(bool)]
    for level, count in flagged.value_counts().items():
        ANOMALIES.labels(confidence=level if level in CONFIDENCE_LABELS else "other").inc(int(count))


def record_progress(progress) -> None:
    """Spark's progress of one micro-batch (``StreamingQueryProgress``): duration, records read, and per partition
    the records between the batch's end offset and the log end Spark saw (``latestOffset``)."""
    lag = {}
    for source in progress.sources:
        try:
            end, latest = json.loads(source.endOffset or "{}"), json.loads(source.latestOffset or "{}")
        except (TypeError, ValueError):
            continue  # not a Kafka source's offsets
        for topic, offsets in (latest if isinstance(latest, dict) else {}).items():
            for partition, offset in offsets.items():
                lag[topic, partition] = int(offset) - int(end.get(topic, {}).get(partition, offset))
    record_batch(progress.batchDuration / 1000, progress.numInputRows)
    record_position(sum(operator.memoryUsedBytes for operator in progress.stateOperators), lag)


def record_batch(seconds: float, records: int) -> None:
    """One batch of a runner (a Spark micro-batch, a decider's poll): its duration and the records it read."""
    BATCH_DURATION.observe(seconds)
    INPUT_RECORDS.inc(records)
    LAST_BATCH.set_to_current_time()


def record_position(state_bytes: int, lag: dict[tuple[str, object], int]) -> None:
    """A runner's detection state size, and per (topic, partition) the records it is behind the log end."""
    STATE_BYTES.set(state_bytes)
    for (topic, partition), behind in lag.items():
        CONSUMER_LAG.labels(topic=topic, partition=partition).set(max(0, behind))
