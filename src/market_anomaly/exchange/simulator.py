"""A Binance-compatible exchange on localhost: kline WebSocket streams and REST klines over a simulated market.

WebSocket: ``/stream?streams=a@kline_1m/b@kline_1m`` (combined payloads), ``/ws/<stream>[/<stream>...]``
(raw payloads), and ``/ws`` or ``/stream`` with the JSON ``SUBSCRIBE``/``UNSUBSCRIBE``/
``LIST_SUBSCRIPTIONS`` methods. Each candle is sent as ``updates_per_candle`` still-open
updates (``x: false``) and one final ``x: true`` when it closes in simulated time. The server
pings every 20 s and closes a connection after 24 h, as Binance does.
REST: ``/api/v3/klines`` (closed candles only), ``/api/v3/ping``, ``/api/v3/time``.

Fault switches for the fault suite: close every connection after N messages
(``drop_every``), send a garbage frame after every N messages (``malformed_every``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from market_anomaly.exchange import protocol
from market_anomaly.exchange.market import Market, partial_candle

log = logging.getLogger(__name__)

# Frames a broken exchange or network might deliver: not JSON, cut short, a closed kline with impossible values.
GARBAGE_FRAMES = (
    "this is not json",
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":0,"T":59999,',
    json.dumps({"e": "kline", "E": 1, "s": "BTCUSDT", "k": {
        "t": 0, "T": 59999, "s": "BTCUSDT", "i": "1m", "f": 0, "L": 0, "o": "10.0", "c": "10.0", "h": "9.0",
        "l": "11.0", "v": "-1", "n": 1, "x": True, "q": "0", "V": "0", "Q": "0", "B": "0"}}),
)
MAX_QUEUED_MESSAGES = 10_000   # a client this far behind is disconnected, as Binance does with slow readers


class SimulatedClock:
    """Simulated epoch milliseconds: ``start`` at creation, advancing ``speed`` times faster than real time."""

    def __init__(self, start: int, speed: float):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = start
        self.speed = speed
        self._real_start = time.monotonic()

    def now(self) -> int:
        return self.start + int((time.monotonic() - self._real_start) * 1000 * self.speed)

    def seconds_until(self, simulated_ms: int) -> float:
        """Real seconds until the simulated clock reads ``simulated_ms``."""
        return max(0.0, (simulated_ms - self.now()) / 1000 / self.speed)


@dataclass(eq=False)
class Subscriber:
    """One WebSocket connection: its streams and the queue its sender drains."""

    combined: bool
    streams: set[str]
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED_MESSAGES))
    sent: int = 0


class ExchangeSimulator:
    """The aiohttp application plus the ticker that turns simulated time into kline events."""

    def __init__(self, market: Market, clock: SimulatedClock, *, updates_per_candle: int = 2,
                 drop_every: int | None = None, malformed_every: int | None = None,
                 heartbeat: float = 20.0, max_connection_age: float = 24 * 3600.0):
        self.market = market
        self.clock = clock
        self.updates_per_candle = updates_per_candle
        self.drop_every = drop_every
        self.malformed_every = malformed_every
        self.heartbeat = heartbeat
        self.max_connection_age = max_connection_age
        self.subscribers: set[Subscriber] = set()
        self.connections_served = 0
        self._garbage = itertools.cycle(GARBAGE_FRAMES)
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task | None = None
        self.host, self.port = "127.0.0.1", 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stream", self._combined_stream)
        app.router.add_get("/ws", self._raw_stream)
        app.router.add_get("/ws/{streams:.+}", self._raw_stream)
        app.router.add_get("/api/v3/klines", self._klines)
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port, see ``self.port``) and start the market ticking."""
        self.market.prepare(self.clock.now() + self.market.interval_ms)
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.host, self.port = host, self._runner.addresses[0][1]
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        # Close open WebSockets first: the server's shutdown would otherwise wait for their handlers.
        for subscriber in list(self.subscribers):
            self._disconnect(subscriber)
        if self._runner:
            await self._runner.cleanup()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- market events -----------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Publish each candle's open updates and its final close as simulated time reaches them."""
        step = self.market.interval_ms
        open_time = self.clock.now() // step * step
        fractions = [(j / (self.updates_per_candle + 1), False) for j in range(1, self.updates_per_candle + 1)]
        while True:
            for fraction, final in [*fractions, (1.0, True)]:
                due = open_time + int(step * fraction)
                await asyncio.sleep(self.clock.seconds_until(due))
                self._publish(open_time, fraction, final)
            open_time += step

    def _publish(self, open_time: int, fraction: float, final: bool) -> None:
        if not self.subscribers:
            return
        event_time = self.clock.now()
        texts: dict[tuple[str, bool], str | None] = {}

        def text(stream: str, combined: bool) -> str | None:
            if (stream, combined) not in texts:
                symbol, interval = protocol.parse_stream_name(stream)
                candle = self.market.candle(symbol, open_time) if interval == self.market.interval else None
                if candle is None:
                    texts[stream, combined] = None
                else:
                    candle = candle if final else partial_candle(candle, fraction)
                    payload = protocol.kline_event(candle, symbol, interval, final=final, event_time=event_time)
                    texts[stream, combined] = json.dumps(protocol.combined(stream, payload) if combined else payload)
            return texts[stream, combined]

        for subscriber in list(self.subscribers):
            for stream in sorted(subscriber.streams):
                message = text(stream, subscriber.combined)
                if message is not None and not self._enqueue(subscriber, message):
                    break

    def _enqueue(self, subscriber: Subscriber, message: str) -> bool:
        """Queue a message for one connection; False if it is too far behind and is being disconnected."""
        try:
            subscriber.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            log.warning("a client is %d messages behind; disconnecting it", MAX_QUEUED_MESSAGES)
            self._disconnect(subscriber)
            return False

    def _disconnect(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(None)   # tells its sender to close

    # -- WebSocket ---------------------------------------------------------------------------------

    async def _combined_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, combined=True, names=request.query.get("streams", ""))

    async def _raw_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, combined=False, names=request.match_info.get("streams", ""))

    async def _serve(self, request: web.Request, combined: bool, names: str) -> web.StreamResponse:
        streams = {name for name in names.split("/") if name}
        invalid = self._invalid_streams(streams)
        if invalid:
            return web.json_response(protocol.error_body(protocol.ERROR_BAD_PARAMETER, invalid), status=400)
        subscriber = Subscriber(combined, streams)
        # Registered before the handshake completes, so no event between handshake and first read is lost.
        self.subscribers.add(subscriber)
        self.connections_served += 1
        ws = web.WebSocketResponse(heartbeat=self.heartbeat)
        sender = None
        try:
            await ws.prepare(request)
            log.debug("WebSocket client %s: %d streams", request.remote, len(streams))
            sender = asyncio.create_task(self._send(ws, subscriber))
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._answer(subscriber, message.data)
        finally:
            self.subscribers.discard(subscriber)
            if sender:
                sender.cancel()
        return ws

    def _invalid_streams(self, streams: set[str]) -> str | None:
        if len(streams) > protocol.MAX_STREAMS_PER_CONNECTION:
            return f"{len(streams)} streams; at most {protocol.MAX_STREAMS_PER_CONNECTION} per connection"
        for name in streams:
            try:
                protocol.parse_stream_name(name)
            except ValueError as error:
                return str(error)
        return None

    async def _send(self, ws: web.WebSocketResponse, subscriber: Subscriber) -> None:
        """Drain the subscriber's queue into the socket; close on the fault switches and at the age limit."""
        try:
            async with asyncio.timeout(self.max_connection_age):
                while (message := await subscriber.queue.get()) is not None:
                    await ws.send_str(message)
                    subscriber.sent += 1
                    if self.malformed_every and subscriber.sent % self.malformed_every == 0:
                        await ws.send_str(next(self._garbage))
                    if self.drop_every and subscriber.sent >= self.drop_every:
                        log.info("dropping a connection after %d messages (--drop-every)", subscriber.sent)
                        break
        except TimeoutError:
            log.info("closing a connection after %.0f s (the 24 h limit)", self.max_connection_age)
        except ConnectionError:
            return
        await ws.close()

    def _answer(self, subscriber: Subscriber, text: str) -> None:
        """The live subscription methods: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS."""
        request = None
        try:
            request = json.loads(text)
            method, params, request_id = request["method"], request.get("params", []), request.get("id")
            if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
                names = set(params)
                invalid = self._invalid_streams(subscriber.streams | names if method == "SUBSCRIBE" else names)
                if invalid:
                    raise ValueError(invalid)
                subscriber.streams = subscriber.streams | names if method == "SUBSCRIBE" else subscriber.streams - names
                reply = {"result": None, "id": request_id}
            elif method == "LIST_SUBSCRIPTIONS":
                reply = {"result": sorted(subscriber.streams), "id": request_id}
            else:
                raise ValueError(f"unknown method {method!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            reply = {"error": {"code": 2, "msg": f"Invalid request: {error}"},
                     "id": request.get("id") if isinstance(request, dict) else None}
        self._enqueue(subscriber, json.dumps(reply))

    # -- REST --------------------------------------------------------------------------------------

    async def _klines(self, request: web.Request) -> web.Response:
        query = request.query
        for name in ("symbol", "interval"):
            if not query.get(name):
                return _error(protocol.ERROR_MANDATORY_PARAMETER,
                              f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        symbol = query["symbol"].upper()
        if symbol not in self.market.symbols:
            return _error(protocol.ERROR_INVALID_SYMBOL, "Invalid symbol.")
        if query["interval"] != self.market.interval:
            return _error(protocol.ERROR_INVALID_INTERVAL, "Invalid interval.")
        numbers = {}
        for name in ("startTime", "endTime", "limit"):
            value = query.get(name)
            if value is not None and not value.isdigit():
                return _error(protocol.ERROR_BAD_PARAMETER,
                              f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
            numbers[name] = int(value) if value is not None else None
        limit = numbers["limit"] or protocol.KLINES_DEFAULT_LIMIT
        if limit > protocol.KLINES_MAX_LIMIT:
            return _error(protocol.ERROR_BAD_PARAMETER,
                          f"Illegal value for parameter 'limit'; at most {protocol.KLINES_MAX_LIMIT}.")
        step = self.market.interval_ms
        last_closed_open_time = self.clock.now() - step   # only closed candles exist yet
        end = min(numbers["endTime"], last_closed_open_time) if numbers["endTime"] is not None \
            else last_closed_open_time
        candles = self.market.candles(symbol, numbers["startTime"], end, limit)
        rows = [protocol.klines_row(candle, self.market.interval) for candle in candles.to_dict("records")]
        return web.json_response(rows)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.clock.now()})


def _error(code: int, message: str) -> web.Response:
    return web.json_response(protocol.error_body(code, message), status=400)
