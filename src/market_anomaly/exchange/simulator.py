"""A Binance-compatible exchange on localhost: kline WebSocket streams and REST klines over a simulated market.

As strict as the real service, so a client that works here works there:

WebSocket: ``/stream?streams=a@kline_1m/b@kline_1m`` (combined payloads), ``/ws/<stream>[/<stream>...]``
(raw payloads), and ``/ws`` or ``/stream`` with the JSON ``SUBSCRIBE``/``UNSUBSCRIBE``/
``LIST_SUBSCRIPTIONS`` methods, acknowledged ``{"result": null, "id": n}`` or refused with the
flat ``{"code": 2, "msg": ..., "id": n}``. Each candle is sent as ``updates_per_candle``
still-open updates (``x: false``) and one final ``x: true`` when it closes in simulated time.
More than 5 incoming messages a second on a connection (pings and pongs count) close it with
1008. The server pings every 20 s, closes a connection after 24 h, and announces maintenance
with a ``serverShutdown`` event before closing (``server_shutdown``).
REST: ``/api/v3/klines`` (the still-open candle is the last row), ``/api/v3/exchangeInfo``
(TRADING/BREAK, price filters), ``/api/v3/ping``, ``/api/v3/time``; each answer after
``rest_latency`` seconds, with its request weight counted per minute in ``X-MBX-USED-WEIGHT-1M``;
past ``weight_limit``, 429 with ``Retry-After``; a request before that Retry-After has passed
is an IP ban (418), counted in ``bans``.

Market events: ``halt(symbol)`` (status BREAK, the stream goes silent), ``resume(symbol)`` (trading
again after its break, which has no candles), ``list_symbol(symbol)`` for a symbol created
``unlisted``, ``quiet`` symbols whose candles have no trades.
Fault switches: close every connection after N messages (``drop_every``), send a garbage frame
after every N messages (``malformed_every``), ``cut_connection()``, ``rate_limit_storm(seconds)``,
``refuse_subscribes`` (the next N SUBSCRIBEs are refused).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import math
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
MAX_QUEUED_MESSAGES = 10_000
TRANSIT_GRACE = 0.1   # seconds after a 429 during which requests already sent are not yet a ban   # a client this far behind is disconnected, as Binance does with slow readers


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
    inbound: collections.deque = field(default_factory=collections.deque)  # arrival times of the last second
    ws: web.WebSocketResponse | None = None

    def over_inbound_limit(self) -> bool:
        """Count one incoming message; True if that makes more than Binance allows in a second."""
        now = time.monotonic()
        self.inbound.append(now)
        while self.inbound and self.inbound[0] <= now - 1.0:
            self.inbound.popleft()
        return len(self.inbound) > protocol.MAX_INBOUND_MESSAGES_PER_SECOND


@dataclass
class RequestWeights:
    """Binance's REQUEST_WEIGHT accounting: per window (a wall-clock minute), 429 past the limit,
    418 (a ban, counted) for a request sent while an announced Retry-After still runs."""

    limit: int = protocol.WEIGHT_LIMIT_PER_MINUTE
    window: float = 60.0
    used: int = 0
    window_start: float = 0.0
    retry_after_since: float = 0.0    # when the last 429 was sent ...
    retry_after_until: float = 0.0    # ... and the time it told the client to wait for
    storm_until: float = 0.0
    bans: int = 0
    too_many: int = 0

    def charge(self, weight: int, now: float) -> tuple[int, float | None]:
        """(HTTP status, Retry-After seconds) for a request of ``weight`` arriving at ``now``."""
        start = now // self.window * self.window
        if start != self.window_start:
            self.window_start, self.used = start, 0
        # Grace for requests already on the wire when the 429 went out.
        if self.retry_after_since + TRANSIT_GRACE < now < self.retry_after_until:
            self.bans += 1
            return 418, max(1.0, 2 * (self.retry_after_until - now))
        if now < self.storm_until:
            self.too_many += 1
            return 429, self.storm_until - now
        self.used += weight
        if self.used > self.limit:
            self.too_many += 1
            return 429, start + self.window - now
        return 200, None


class ExchangeSimulator:
    """The aiohttp application plus the ticker that turns simulated time into kline events."""

    def __init__(self, market: Market, clock: SimulatedClock, *, updates_per_candle: int = 2,
                 drop_every: int | None = None, malformed_every: int | None = None,
                 heartbeat: float = 20.0, max_connection_age: float = 24 * 3600.0, rest_latency: float = 0.0,
                 weight_limit: int = protocol.WEIGHT_LIMIT_PER_MINUTE, weight_window: float = 60.0,
                 halted: tuple[str, ...] = (), unlisted: tuple[str, ...] = (), quiet: tuple[str, ...] = (),
                 control: bool = False):
        self.market = market
        self.clock = clock
        self.updates_per_candle = updates_per_candle
        self.drop_every = drop_every
        self.malformed_every = malformed_every
        self.heartbeat = heartbeat
        self.max_connection_age = max_connection_age
        self.rest_latency = rest_latency
        self.weights = RequestWeights(weight_limit, weight_window)
        self.quiet = frozenset(quiet)
        self.unlisted = set(unlisted)
        # symbol -> open time of its first candle after a halt (BREAK from then on)
        self.halted_from: dict[str, int] = dict.fromkeys(halted, -1)
        self.resumed_from: dict[str, int] = {}  # symbol -> open time of its first candle after its break
        self.listed_from: dict[str, int] = {}
        self.closes_published: dict[str, list[int]] = collections.defaultdict(list)
        self.refuse_subscribes = 0
        self.control = control
        self.policy_closes = 0       # connections closed for sending more than 5 messages a second
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
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.middlewares.append(self._rest_rules)
        if self.control:
            app.router.add_post("/sim/{action}", self._control)
            app.router.add_get("/sim/report", self._report)
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

    # -- market events and faults -------------------------------------------------------------------

    def status(self, symbol: str) -> str | None:
        """TRADING, BREAK, or None for a symbol this exchange does not list."""
        if symbol not in self.market.symbols or symbol in self.unlisted:
            return None
        return "BREAK" if symbol in self.halted_from and symbol not in self.resumed_from else "TRADING"

    def halt(self, symbol: str) -> None:
        """Trading stops now: status BREAK, no more candles after the one open now."""
        self.halted_from[symbol] = self.current_open_time() + self.market.interval_ms
        log.info("%s halted", symbol)

    def resume(self, symbol: str) -> None:
        """A halted symbol trades again from the next candle (one break per symbol); its break has no candles."""
        self.resumed_from[symbol] = self.current_open_time() + self.market.interval_ms
        log.info("%s trading again", symbol)

    def list_symbol(self, symbol: str) -> None:
        """An ``unlisted`` symbol starts trading: its first candle is the next one."""
        self.unlisted.discard(symbol)
        self.listed_from[symbol] = self.current_open_time() + self.market.interval_ms
        log.info("%s listed", symbol)

    def current_open_time(self) -> int:
        return self.clock.now() // self.market.interval_ms * self.market.interval_ms

    def candle(self, symbol: str, open_time: int) -> dict | None:
        """The candle as this exchange serves it: none before a listing or after a halt, zero trades when quiet."""
        if self.status(symbol) is None or open_time < self.listed_from.get(symbol, open_time):
            return None
        halted_from = self.halted_from.get(symbol)
        if (halted_from is not None and (halted_from < 0 or open_time >= halted_from)
                and open_time < self.resumed_from.get(symbol, open_time + 1)):
            return None
        candle = self.market.candle(symbol, open_time)
        if candle is not None and symbol in self.quiet:
            flat = candle["open"]
            candle = {**candle, "high": flat, "low": flat, "close": flat, "trades": 0,
                      **dict.fromkeys(("volume", "quote_volume", "taker_buy_base", "taker_buy_quote"), 0.0)}
        return candle

    def rate_limit_storm(self, seconds: float) -> None:
        """Every REST request for ``seconds`` gets 429 with Retry-After (the IP's budget spent elsewhere)."""
        self.weights.storm_until = time.time() + seconds

    def cut_connection(self) -> bool:
        """Close one connection without warning; False if none is open."""
        for subscriber in list(self.subscribers):
            self._disconnect(subscriber)
            return True
        return False

    async def server_shutdown(self, grace: float) -> int:
        """Announce maintenance to every open connection, then close them ``grace`` seconds later."""
        leaving = list(self.subscribers)
        event = json.dumps(protocol.shutdown_event(self.clock.now()))
        for subscriber in leaving:
            self._enqueue(subscriber, event)
        await asyncio.sleep(grace)
        for subscriber in leaving:
            self._disconnect(subscriber)
        return len(leaving)

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
        if final:
            for symbol in self.market.symbols:
                if self.candle(symbol, open_time) is not None:
                    self.closes_published[symbol].append(open_time)
        if not self.subscribers:
            return
        event_time = self.clock.now()
        texts: dict[tuple[str, bool], str | None] = {}

        def text(stream: str, combined: bool) -> str | None:
            if (stream, combined) not in texts:
                symbol, interval = protocol.parse_stream_name(stream)
                candle = self.candle(symbol, open_time) if interval == self.market.interval else None
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
        # autoping off: the client's pings and pongs count towards its 5 messages a second.
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, autoping=False)
        subscriber.ws = ws
        sender = None
        try:
            await ws.prepare(request)
            log.debug("WebSocket client %s: %d streams", request.remote, len(streams))
            sender = asyncio.create_task(self._send(ws, subscriber))
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.PING, WSMsgType.PONG) \
                        and subscriber.over_inbound_limit():
                    self.policy_closes += 1
                    log.warning("closing a connection: more than %d incoming messages a second",
                                protocol.MAX_INBOUND_MESSAGES_PER_SECOND)
                    await ws.close(code=1008, message=b"Too many requests")
                    break
                if message.type == WSMsgType.PING:
                    await ws.pong(message.data)
                elif message.type == WSMsgType.TEXT:
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
        except ValueError as error:
            self._enqueue(subscriber, json.dumps(protocol.error_body(protocol.ERROR_INVALID_JSON,
                                                                     f"Invalid JSON: {error}", None)))
            return
        try:
            method, params, request_id = request["method"], request.get("params", []), request.get("id")
            if method == "SUBSCRIBE" and self.refuse_subscribes > 0:
                self.refuse_subscribes -= 1
                raise ValueError("too many subscriptions in progress, try again")
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
            reply = protocol.error_body(protocol.ERROR_INVALID_REQUEST, f"Invalid request: {error}",
                                        request.get("id") if isinstance(request, dict) else None)
            reply.setdefault("id", None)
        self._enqueue(subscriber, json.dumps(reply))

    # -- REST --------------------------------------------------------------------------------------

    @web.middleware
    async def _rest_rules(self, request: web.Request, handler) -> web.StreamResponse:
        """Latency, request weight and rate limits around every REST call."""
        if not request.path.startswith("/api/"):
            return await handler(request)   # WebSocket handshakes and the control endpoints
        status, retry_after = self.weights.charge(protocol.request_weight(request.path, request.query),
                                                  time.time())
        await asyncio.sleep(self.rest_latency)
        headers = {protocol.USED_WEIGHT_HEADER: str(self.weights.used)}
        if status != 200:
            retry = max(1, math.ceil(retry_after))
            if status == 429:   # the client is told now; asking again before then is a ban
                self.weights.retry_after_since = time.time()
                self.weights.retry_after_until = max(self.weights.retry_after_until, time.time() + retry)
            message = "Too many requests; IP banned." if status == 418 else "Too many requests."
            return web.json_response(protocol.error_body(protocol.ERROR_TOO_MANY_REQUESTS, message), status=status,
                                     headers={**headers, "Retry-After": str(retry)})
        response = await handler(request)
        response.headers.update(headers)
        return response

    # -- control, for tests and benchmarks driving a simulator in another process ---------------------

    async def _control(self, request: web.Request) -> web.Response:
        """POST /sim/halt?symbol=, /sim/list?symbol=, /sim/storm?seconds=, /sim/shutdown?grace=, /sim/cut."""
        action, query = request.match_info["action"], request.query
        if action == "halt":
            self.halt(query["symbol"])
        elif action == "list":
            self.list_symbol(query["symbol"])
        elif action == "storm":
            self.rate_limit_storm(float(query["seconds"]))
        elif action == "shutdown":
            asyncio.get_running_loop().create_task(self.server_shutdown(float(query.get("grace", "2"))))
        elif action == "cut":
            self.cut_connection()
        else:
            return web.json_response({"error": f"unknown action {action}"}, status=404)
        return web.json_response({"ok": True, "now": self.clock.now()})

    async def _report(self, request: web.Request) -> web.Response:
        """What was served and enforced: closes published per symbol, halts, listings, bans, policy closes."""
        return web.json_response({
            "now": self.clock.now(), "interval_ms": self.market.interval_ms,
            "closes": self.closes_published, "halted_from": self.halted_from, "listed_from": self.listed_from,
            "connections_served": self.connections_served, "open_connections": len(self.subscribers),
            "policy_closes": self.policy_closes, "bans": self.weights.bans, "too_many": self.weights.too_many,
        })

    async def _exchange_info(self, request: web.Request) -> web.Response:
        wanted = request.query.get("symbol")
        symbols = [symbol for symbol in self.market.symbols if self.status(symbol) is not None]
        if wanted is not None:
            if self.status(wanted.upper()) is None:
                return _error(protocol.ERROR_INVALID_SYMBOL, "Invalid symbol.")
            symbols = [wanted.upper()]
        return web.json_response({
            "timezone": "UTC", "serverTime": self.clock.now(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                            "limit": self.weights.limit}],
            "symbols": [protocol.symbol_info(symbol, self.status(symbol), self.market.tick_size(symbol))
                        for symbol in symbols],
        })

    async def _klines(self, request: web.Request) -> web.Response:
        query = request.query
        for name in ("symbol", "interval"):
            if not query.get(name):
                return _error(protocol.ERROR_MANDATORY_PARAMETER,
                              f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        symbol = query["symbol"].upper()
        if self.status(symbol) is None:
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
        now = self.clock.now()
        current = self.current_open_time()     # Binance lists the still-open candle last
        end = min(numbers["endTime"], current) if numbers["endTime"] is not None else current
        start = numbers["startTime"]
        if symbol in self.listed_from and start is not None:   # a listing's first candle is its first row
            start = max(start, self.listed_from[symbol])
        if self.halted_from.get(symbol, -1) >= 0 and symbol not in self.resumed_from:  # nothing after a halt
            end = min(end, self.halted_from[symbol] - self.market.interval_ms)
        candles = self.market.candles(symbol, start, end, limit)
        rows = []
        for candle in candles.to_dict("records"):
            served = self.candle(symbol, int(candle["open_time"]))
            if served is None:
                continue
            if served["open_time"] == current:
                served = partial_candle(served, (now - current) / self.market.interval_ms)
            rows.append(protocol.klines_row(served, self.market.interval))
        return web.json_response(rows)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.clock.now()})


def _error(code: int, message: str) -> web.Response:
    """A 400 with Binance's flat error body (other 4xx are not worth retrying either)."""
    return web.json_response(protocol.error_body(code, message), status=400)
