"""Binance kline client: closed candles from the WebSocket, with the gaps filled from REST.

``BinanceKlineClient.candles()`` yields every closed candle of every symbol once, in
open-time order per symbol, for as long as it runs: it reconnects after any drop with
exponential back-off and jitter, reconnects on its own before Binance's 24 h limit,
and after each (re)connect fetches from ``/api/v3/klines`` whatever closed since the last
candle it yielded. Frames that are not valid klines come out as ``Rejected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection

from market_anomaly import metrics
from market_anomaly.candles.record import Candle, MalformedCandle, Rejected
from market_anomaly.exchange import protocol

log = logging.getLogger("market_anomaly.exchange.client")

MAX_URL_LENGTH = 2000           # longer stream lists are sent as SUBSCRIBE messages instead of in the URL
STREAMS_PER_SUBSCRIBE = 200
SUBSCRIBE_PAUSE = 0.25          # Binance accepts at most 5 incoming messages per second per connection


class ExponentialBackoff:
    """Delays of ``initial * 2**n`` capped at ``maximum``, each scaled by a random 50-100 % (jitter,
    so many clients dropped together do not reconnect together)."""

    def __init__(self, initial: float, maximum: float):
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class RestUnavailable(RuntimeError):
    """REST kept failing after every retry."""


class BinanceKlineClient:
    """Closed klines of ``symbols`` at ``interval`` from a Binance-compatible exchange."""

    def __init__(self, ws_url: str, rest_url: str, symbols: list[str], interval: str, seed_history: int = 0, *,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 max_connection_age: float = 23.5 * 3600, streams_per_connection: int = protocol.MAX_STREAMS_PER_CONNECTION,
                 ping_interval: float = 20.0, ping_timeout: float = 20.0,
                 rest_attempts: int = 8, rest_timeout: float = 10.0):
        if not symbols:
            raise ValueError("no symbols to watch")
        self.ws_url = ws_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.symbols = [symbol.upper() for symbol in symbols]
        self.interval = interval
        self.interval_ms = protocol.interval_ms(interval)
        self.seed_history = seed_history
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.max_connection_age = max_connection_age
        self.streams_per_connection = streams_per_connection
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.rest_attempts = rest_attempts
        self.rest_timeout = rest_timeout

    def candles(self) -> CandleStream:
        """Closed candles (and rejected frames) as they come: ``anext()`` them, ``aclose()`` when done."""
        return CandleStream(self)


class CandleStream:
    """The async iterator ``candles()`` returns; the connections start on the first ``anext()``.

    A class rather than an async generator: ``aclose()`` must work even while an ``anext()``
    is still pending (a consumer that stops on a signal cancels that call and closes at once,
    which an async generator refuses with "already running").
    """

    _CLOSED = object()

    def __init__(self, client: BinanceKlineClient):
        self._client = client
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        self._session: aiohttp.ClientSession | None = None
        self._connections: list[asyncio.Task] = []
        self._closed = False

    def __aiter__(self) -> CandleStream:
        return self

    async def __anext__(self) -> Candle | Rejected:
        if self._closed:
            raise StopAsyncIteration
        if self._session is None:
            self._start()
        item = await self._queue.get()
        if item is self._CLOSED:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            await self.aclose()
            raise item
        return item

    def _start(self) -> None:
        client = self._client
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=client.rest_timeout))
        groups = [client.symbols[i:i + client.streams_per_connection]
                  for i in range(0, len(client.symbols), client.streams_per_connection)]
        self._connections = [asyncio.create_task(_KlineConnection(client, group, self._session, self._queue)
                                                 .run_forever()) for group in groups]

    async def aclose(self) -> None:
        """Stop every connection and release the HTTP session; a pending ``anext()`` ends the iteration."""
        if self._closed:
            return
        self._closed = True
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(asyncio.QueueFull):   # a full queue has no waiting anext() to wake
            self._queue.put_nowait(self._CLOSED)


class _KlineConnection:
    """One WebSocket connection (up to 1024 streams) and the REST backfill of its symbols.

    Each symbol belongs to exactly one connection, so de-duplication by open time happens here.
    """

    def __init__(self, client: BinanceKlineClient, symbols: list[str], session: aiohttp.ClientSession,
                 queue: asyncio.Queue):
        self.client = client
        self.symbols = symbols
        self.session = session
        self.queue = queue
        self.streams = [protocol.stream_name(symbol, client.interval) for symbol in symbols]
        self.last_open_time: dict[str, int] = {}
        self.backoff = ExponentialBackoff(client.backoff_initial, client.backoff_max)
        self.seeded = False

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    if await self._connect_and_read():
                        continue    # renewed before the age limit: no back-off, the catch-up covers the switch
                    problem = "closed by the exchange"
                except (websockets.ConnectionClosed, websockets.InvalidHandshake, OSError, TimeoutError) as error:
                    problem = str(error) or type(error).__name__
                delay = self.backoff.next_delay()
                metrics.WEBSOCKET_RECONNECTS.inc()
                log.warning("WebSocket %s (%d streams): %s; reconnecting in %.1fs", self.client.ws_url,
                            len(self.streams), problem, delay)
                await asyncio.sleep(delay)
        except Exception as error:  # a bug or a bad URL: surface it to the consumer instead of hanging
            await self.queue.put(error)

    async def _connect_and_read(self) -> bool:
        """One connection's life; True if it ended because it reached the age limit."""
        client = self.client
        url = f"{client.ws_url}/stream?streams={'/'.join(self.streams)}"
        subscribe = len(url) > MAX_URL_LENGTH
        # websockets answers the server's pings itself and pings the server (keepalive) to detect dead links.
        async with websockets.connect(f"{client.ws_url}/stream" if subscribe else url,
                                      ping_interval=client.ping_interval, ping_timeout=client.ping_timeout,
                                      open_timeout=client.rest_timeout, max_queue=4096) as ws:
            log.info("connected to %s: %d kline streams", client.ws_url, len(self.streams))
            age_limit = asyncio.timeout(client.max_connection_age)
            try:
                async with age_limit:
                    if subscribe:
                        await self._subscribe(ws)
                    # Connected first, then REST: a candle closing meanwhile waits in the socket's queue.
                    await self._catch_up()
                    async for frame in ws:
                        item = parse_frame(frame)
                        if item is not None:
                            self.backoff.reset()   # the connection works: the next drop starts afresh
                            await self._emit(item, live=True)
            except TimeoutError:
                if not age_limit.expired():
                    raise
                log.info("reconnecting before the exchange's 24 h connection limit")
                return True
        return False

    async def _subscribe(self, ws: ClientConnection) -> None:
        for request_id, start in enumerate(range(0, len(self.streams), STREAMS_PER_SUBSCRIBE), start=1):
            params = self.streams[start:start + STREAMS_PER_SUBSCRIBE]
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": params, "id": request_id}))
            await asyncio.sleep(SUBSCRIBE_PAUSE)

    async def _catch_up(self) -> None:
        """Seed history on the first connection; afterwards, the gap since each symbol's last candle."""
        seed = self.client.seed_history if not self.seeded else 0
        if not seed and not self.last_open_time:
            return
        server_time = await self._server_time()
        if server_time is None:
            return
        step = self.client.interval_ms
        counts = {}
        for symbol in self.symbols:
            if seed:
                start = server_time // step * step - seed * step
            elif symbol in self.last_open_time:
                start = self.last_open_time[symbol] + step
            else:
                continue
            counts[symbol] = await self._backfill(symbol, start, server_time)
        log.info("%s %d closed candles from REST for %d symbols (%s)", "seeded" if seed else "backfilled",
                 sum(counts.values()), len(counts),
                 ", ".join(f"{symbol} {count}" for symbol, count in list(counts.items())[:8])
                 + (", ..." if len(counts) > 8 else ""))
        self.seeded = True

    async def _emit(self, item: Candle | Rejected, live: bool = False) -> None:
        """Queue an item; candles only if they are new for their symbol, after filling any gap before them."""
        if isinstance(item, Candle):
            last = self.last_open_time.get(item.symbol)
            if last is not None and item.open_time <= last:
                return
            if live and last is not None and item.open_time > last + self.client.interval_ms:
                server_time = await self._server_time()
                if server_time is not None:
                    await self._backfill(item.symbol, last + self.client.interval_ms, min(server_time, item.open_time))
                if item.open_time <= self.last_open_time[item.symbol]:
                    return
            self.last_open_time[item.symbol] = item.open_time
        await self.queue.put(item)

    async def _backfill(self, symbol: str, start: int, server_time: int) -> int:
        """Emit the candles opening from ``start`` that closed before ``server_time``, paging by 1000."""
        count = 0
        while True:
            try:
                rows = await self._rest("/api/v3/klines", {"symbol": symbol, "interval": self.client.interval,
                                                           "startTime": start, "limit": protocol.KLINES_MAX_LIMIT})
            except RestUnavailable as error:
                log.error("%s: gap from %d left unfilled: %s", symbol, start, error)
                return count
            if not isinstance(rows, list):
                await self._emit(Rejected(json.dumps(rows), "klines response is not a list"))
                return count
            for row in rows:
                try:
                    candle = Candle.from_rest_row(symbol, self.client.interval, row)
                except MalformedCandle as error:
                    await self._emit(Rejected(json.dumps(row), str(error)))
                    continue
                if candle.close_time >= server_time:
                    return count          # still open (Binance lists the current candle last)
                await self._emit(candle)
                count += 1
                start = candle.open_time + self.client.interval_ms
            if len(rows) < protocol.KLINES_MAX_LIMIT:
                return count

    async def _server_time(self) -> int | None:
        try:
            return int((await self._rest("/api/v3/time", {}))["serverTime"])
        except (RestUnavailable, KeyError, TypeError, ValueError) as error:
            log.error("no server time from %s, so no backfill this time: %s", self.client.rest_url, error)
            return None

    async def _rest(self, path: str, params: dict) -> object:
        """GET with retries: back-off on errors, Retry-After on 429 (rate limit) and 418 (IP ban)."""
        backoff = ExponentialBackoff(self.client.backoff_initial, self.client.backoff_max)
        url = self.client.rest_url + path
        for _ in range(self.client.rest_attempts):
            delay = None
            try:
                async with self.session.get(url, params=params) as response:
                    body = await response.json(content_type=None)
                    if response.status == 200 and not (isinstance(body, dict) and "code" in body):
                        return body
                    problem = f"HTTP {response.status} {body}"
                    if response.status in (418, 429) and response.headers.get("Retry-After", "").isdigit():
                        delay = float(response.headers["Retry-After"])
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                problem = f"{type(error).__name__}: {error}"
            delay = max(delay or 0.0, backoff.next_delay())
            log.warning("GET %s %s failed (%s); retrying in %.1fs", path, params, problem, delay)
            await asyncio.sleep(delay)
        raise RestUnavailable(f"GET {url} failed {self.client.rest_attempts} times")


def parse_frame(frame: str | bytes) -> Candle | Rejected | None:
    """A WebSocket frame -> a closed candle, a rejected frame, or None (an open candle or a method reply)."""
    text = frame.decode("utf-8", errors="replace") if isinstance(frame, bytes) else frame
    try:
        message = json.loads(text)
    except ValueError as error:
        return Rejected(text, f"invalid JSON: {error}")
    if isinstance(message, dict) and "stream" in message:
        message = message.get("data")
    if not isinstance(message, dict):
        return Rejected(text, "not a JSON object")
    if "id" in message and ("result" in message or "error" in message):
        if "error" in message:
            log.error("the exchange refused a request: %s", message["error"])
        return None
    kline = message.get("k")
    if message.get("e") != "kline" or not isinstance(kline, dict):
        return Rejected(text, f"not a kline event: e={message.get('e')!r}")
    if "x" not in kline:
        return Rejected(text, "missing field x (closed)")
    if kline["x"] is not True:
        return None
    event_time = message.get("E")
    try:
        return Candle.from_kline(kline, event_time=event_time if isinstance(event_time, int) else None, source="ws")
    except MalformedCandle as error:
        return Rejected(text, str(error))
