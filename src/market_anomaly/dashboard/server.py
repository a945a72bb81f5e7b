"""The dashboard's web server: the static page and the JSON API it polls, from the sinks' database.

API (all JSON; times are epoch milliseconds, or ISO 8601 in UTC for ``since``/``until``):

- ``/api/symbols?q=&limit=``: ``{"symbols": [...], "matches": n}``, the symbols containing ``q``
  (case-insensitive; those starting with it first), at most ``limit`` (default 100, at most 5000)
- ``/api/anomalies?symbol=&confidence=&reason=&since=&until=&limit=``: newest first; ``confidence``
  is a minimum, ``reason`` a case-insensitive substring, ``since``/``until`` bound ``open_time``
- ``/api/candles?symbol=&minutes=&until=``: the symbol's decisions (OHLC, anomaly, reasons) for
  ``minutes`` of market time ending at ``until`` or at its latest candle (the simulator runs
  faster than the clock, so "the last hour" means the market's last hour)
- ``/api/health?limit=&stale_after=``: the job's latest progress, candles/s over the last minute,
  the symbols' counts (``total``, ``stale``, ``fresh``; stale: no candle for ``stale_after``
  seconds of market time behind the newest, default 180), the ``limit`` symbols furthest behind
  with their last candle (default 50), Kafka message counts per topic and consumer lag per
  partition of the candle topic

Kafka offsets are polled in the background (a slow or absent broker never delays a
response); the page shows the last poll and its error, if any.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path

from aiohttp import web

from market_anomaly import config
from market_anomaly.dashboard import live
from market_anomaly.sinks.common import CONFIDENCE_LEVELS, json_text
from market_anomaly.sinks.database import STALE_AFTER_MS, Database

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_CANDLES = 2000
MAX_LISTED = 5000  # symbols in one /api/symbols or /api/health answer
DATABASE = web.AppKey("database", Database)


def parse_time(value: str | None, name: str) -> int | None:
    """Epoch ms, or ISO 8601 (naive means UTC) -> epoch ms; a bad value is the client's error (400)."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: not epoch milliseconds or an ISO 8601 time: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp() * 1000)


def parse_int(value: str | None, name: str, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: not an integer: {value!r}")
    return max(1, min(number, maximum))


def kafka_problem(error: Exception) -> str:
    """What the page and /api/health show of a Kafka error: its kind, never the client's raw text (which can
    name hosts, principals or settings)."""
    code = getattr(error.args[0], "name", None) if error.args else None
    name = code() if callable(code) else type(error).__name__
    for words, problem in (("TRANSPORT", "broker unreachable"), ("BROKERS_DOWN", "broker unreachable"),
                           ("TIMED_OUT", "timed out"), ("AUTHENTICATION", "authentication failed"),
                           ("AUTHORIZATION", "not authorised"), ("UNKNOWN_TOPIC", "topic missing"),
                           ("SSL", "TLS handshake failed")):
        if words in name:
            return problem
    return f"Kafka error {name}"


class KafkaStats:
    """Watermarks of the candle, dead-letter and anomaly topics, refreshed in the background every ``interval`` s."""

    def __init__(self, client_config: dict[str, str] | None, candles_topic: str = config.CANDLES_TOPIC,
                 interval: float = 3.0):
        self.client_config = client_config
        self.candles_topic = candles_topic
        self.topics = (candles_topic, config.DEAD_LETTER_TOPIC, config.ANOMALIES_TOPIC)
        self.interval = interval
        self.latest: dict[str, object] = {"topics": {}, "error": None, "at": None}
        self._reported_error: str | None = None

    def poll_once(self) -> dict[str, object]:
        from market_anomaly.kafka.topics import topic_offsets

        topics, errors = {}, []
        for topic in self.topics:
            try:
                offsets = topic_offsets(self.client_config, topic, timeout=2.0)
            except Exception as error:  # broker down, topic missing, auth: the log has the details
                errors.append(f"{topic}: {kafka_problem(error)}")
                log.debug("kafka stats: %s: %s", topic, error)
                continue
            topics[topic] = {
                "messages": sum(high - low for low, high in offsets.values()),
                "partitions": {str(p): {"low": low, "high": high} for p, (low, high) in offsets.items()},
            }
        error = "; ".join(errors) or None
        if error != self._reported_error:  # log changes only, not every poll
            (log.warning if error else log.info)("kafka stats: %s", error or "broker answers")
            self._reported_error = error
        return {"topics": topics, "error": error, "at": int(time.time() * 1000)}

    async def run(self) -> None:
        while True:
            self.latest = await asyncio.to_thread(self.poll_once)
            await asyncio.sleep(self.interval)

    def lag(self, progress: dict[str, object] | None) -> list[dict[str, object]]:
        """Per candle-topic partition: the job's last end offset vs the log end; ``lag`` None until the job reports."""
        reported = (progress or {}).get("partitions") or {}
        topic = self.candles_topic
        rows = []
        for partition, marks in sorted(self.latest["topics"].get(topic, {}).get("partitions", {}).items(),
                                       key=lambda item: int(item[0])):
            end_offset = reported.get(f"{topic}:{partition}", {}).get("end_offset")
            rows.append({"partition": f"{topic}:{partition}", "end_offset": end_offset, "high": marks["high"],
                         "lag": None if end_offset is None else max(0, marks["high"] - end_offset)})
        return rows


KAFKA = web.AppKey("kafka", KafkaStats)


def json_response(data: dict) -> web.Response:
    """JSON with NaN and infinities as null: the browser's parser refuses them, and the page with it."""
    return web.json_response(data, dumps=json_text)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def symbols(request: web.Request) -> web.Response:
    found, matches = await asyncio.to_thread(request.app[DATABASE].symbols, request.query.get("q", ""),
                                             parse_int(request.query.get("limit"), "limit", 100, MAX_LISTED))
    return json_response({"symbols": found, "matches": matches})


async def anomalies(request: web.Request) -> web.Response:
    query = request.query
    confidence = query.get("confidence") or None
    if confidence and confidence.upper() not in CONFIDENCE_LEVELS:
        raise web.HTTPBadRequest(text=f"confidence: one of {', '.join(CONFIDENCE_LEVELS)}, not {confidence!r}")
    rows = await asyncio.to_thread(
        request.app[DATABASE].recent_anomalies,
        symbol=query.get("symbol") or None, min_confidence=confidence, reason=query.get("reason") or None,
        since=parse_time(query.get("since"), "since"), until=parse_time(query.get("until"), "until"),
        limit=parse_int(query.get("limit"), "limit", 200, 5000),
    )
    return json_response({"anomalies": rows})


async def candles(request: web.Request) -> web.Response:
    database = request.app[DATABASE]
    symbol = request.query.get("symbol", "").strip().upper()
    if not symbol:
        raise web.HTTPBadRequest(text="symbol is required")
    minutes = parse_int(request.query.get("minutes"), "minutes", 120, 7 * 24 * 60)
    until = parse_time(request.query.get("until"), "until")
    if until is None:
        until = await asyncio.to_thread(database.latest_open_time, symbol)
    rows = [] if until is None else await asyncio.to_thread(
        database.decisions, symbol, since=until - minutes * 60_000 + 1, until=until, limit=MAX_CANDLES)
    return json_response({"symbol": symbol, "minutes": minutes, "until": until, "candles": rows})


async def health(request: web.Request) -> web.Response:
    report = await asyncio.to_thread(
        request.app[DATABASE].health, limit=parse_int(request.query.get("limit"), "limit", 50, MAX_LISTED),
        stale_after_ms=1000 * parse_int(request.query.get("stale_after"), "stale_after",
                                        STALE_AFTER_MS // 1000, 365 * 86_400))
    kafka: KafkaStats = request.app[KAFKA]
    report["kafka"] = {**kafka.latest, "lag": kafka.lag(report["progress"]), "candles_topic": kafka.candles_topic,
                       "enabled": kafka.client_config is not None}
    return json_response(report)


def create_app(database: Database, kafka_config: dict[str, str] | None,
               candles_topic: str = config.CANDLES_TOPIC) -> web.Application:
    """The dashboard application; ``kafka_config`` None leaves out the Kafka counts and lag."""
    app = web.Application()
    app[DATABASE] = database
    app[KAFKA] = KafkaStats(kafka_config, candles_topic)

    async def poll_kafka(app: web.Application):
        task = asyncio.create_task(app[KAFKA].run()) if kafka_config is not None else None
        yield
        if task is not None:
            task.cancel()

    app.cleanup_ctx.append(poll_kafka)
    app.router.add_get("/", index)
    app.router.add_get("/api/symbols", symbols)
    app.router.add_get("/api/anomalies", anomalies)
    app.router.add_get("/api/candles", candles)
    app.router.add_get("/api/health", health)
    app.router.add_static("/static/", STATIC_DIR)
    live.install(app, database)
    return app
