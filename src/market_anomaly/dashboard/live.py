"""The dashboard's live side: server-sent events to the page, and its Prometheus metrics.

``/api/events?symbol=&after=`` is a ``text/event-stream``. One watcher per server reads the
job's progress record (one row) every ``PROGRESS_POLL_SECONDS``; when a new micro-batch has
been recorded, every open stream gets

- ``candles``: ``{"symbol", "candles": [...]}``, the stream's symbol's decisions after the last
  one it sent (or after ``after``, the newest candle the page already has); the event ``id``
  is the newest ``open_time``, so a reconnecting browser (``Last-Event-ID``) resumes there;
- ``progress``: ``{"batch_id", "at"}``, for the page to refresh its anomaly table and health.

A comment line every ``KEEPALIVE_SECONDS`` keeps proxies from closing an idle stream. At
shutdown every stream ends, so the server stops at once instead of waiting for the pages.

``/metrics`` serves the dashboard's metrics (``market_anomaly.metrics``: response times by
route, open event streams, events sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from market_anomaly import metrics
from market_anomaly.sinks.database import Database

log = logging.getLogger(__name__)

PROGRESS_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
MAX_CANDLES_PER_EVENT = 2000
LATEST_PROGRESS = "SELECT batch_id, at FROM pipeline_health WHERE query = 'detect'"


class ProgressWatcher:
    """Wakes the event streams whenever the job records a new micro-batch."""

    def __init__(self, database: Database):
        self.database = database
        self.progress: dict[str, object] | None = None
        self.stopping = False
        self._changed = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """Set at the next change (or at shutdown); take it before reading what to send."""
        return self._changed

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def run(self) -> None:
        reported = False
        while True:
            try:
                rows = await asyncio.to_thread(self.database.query, LATEST_PROGRESS)
                reported = False
            except Exception as error:  # the schema not created yet, a database restart: try again
                if not reported:
                    log.warning("live events: cannot read the job's progress (%s); retrying", type(error).__name__)
                    reported = True
                rows = []
            latest = rows[0] if rows else None
            if latest is not None and latest != self.progress:
                self.progress = latest
                self._notify()
            await asyncio.sleep(PROGRESS_POLL_SECONDS)

    def stop(self) -> None:
        self.stopping = True
        self._notify()


WATCHER = web.AppKey("progress_watcher", ProgressWatcher)


def event(name: str, data: object, event_id: object = None) -> bytes:
    lines = [f"event: {name}"] + ([f"id: {event_id}"] if event_id is not None else [])
    lines.append("data: " + json.dumps(data, default=str, separators=(",", ":")))
    metrics.DASHBOARD_EVENTS.labels(event=name).inc()
    return ("\n".join(lines) + "\n\n").encode()


def _after(request: web.Request) -> int | None:
    """The newest open_time the page has: Last-Event-ID on a reconnect, else ``after``."""
    for value in (request.headers.get("Last-Event-ID"), request.query.get("after")):
        if value and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


async def events(request: web.Request) -> web.StreamResponse:
    watcher = request.app[WATCHER]
    database = watcher.database
    symbol = request.query.get("symbol", "").strip().upper() or None
    after = _after(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    changed = watcher.next_change()  # taken before any work, so a batch recorded meanwhile is not missed
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    metrics.DASHBOARD_EVENT_STREAMS.inc()
    try:
        while not watcher.stopping:
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if watcher.stopping:
                break
            changed = watcher.next_change()
            if symbol is not None:
                since = after + 1 if after is not None else None
                rows = await asyncio.to_thread(database.decisions, symbol, since=since, limit=MAX_CANDLES_PER_EVENT)
                if rows:
                    after = rows[-1]["open_time"]
                    await response.write(event("candles", {"symbol": symbol, "candles": rows}, after))
            await response.write(event("progress", watcher.progress))
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the page went away, or the server stops
    finally:
        metrics.DASHBOARD_EVENT_STREAMS.dec()
    return response


REGISTRY = web.AppKey("metrics_registry", object)


async def metrics_page(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[REGISTRY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def timed(request: web.Request, handler):
    """Response time by route (its pattern, so the label set stays bounded); event streams are not timed."""
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route != "/api/events":
            metrics.DASHBOARD_REQUESTS.labels(route=route).observe(time.perf_counter() - started)


def install(app: web.Application, database: Database) -> None:
    """Add the event stream, ``/metrics`` and the timing middleware to the dashboard ``app``."""
    app[WATCHER] = ProgressWatcher(database)
    app[REGISTRY] = metrics.registry("dashboard")

    async def watch(app: web.Application):
        task = asyncio.create_task(app[WATCHER].run())
        yield
        task.cancel()

    async def end_streams(app: web.Application) -> None:
        app[WATCHER].stop()

    app.cleanup_ctx.append(watch)
    app.on_shutdown.append(end_streams)
    app.middlewares.append(timed)
    app.router.add_get("/api/events", events)
    app.router.add_get("/metrics", metrics_page)
