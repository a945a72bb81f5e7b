"""Binance kline client: closed candles from the WebSocket, with the gaps filled from REST.

``BinanceKlineClient.candles()`` yields every closed candle of every symbol once, in
open-time order per symbol, for as long as it runs. Built for thousands of symbols:

- streams are spread over connections of ``streams_per_connection``; each connection has its
  own tasks: a reader (only parses and hands on, so pings are always answered) and a
  subscriber that sends SUBSCRIBE/UNSUBSCRIBE paced under Binance's 5 incoming messages a
  second (pings and pongs count too) and waits for each acknowledgement by id; a refused
  request is retried, then reported;
- REST catch-up (after a (re)connect, from a resume point or for seeding) and gap fills run
  in a few worker tasks sharing one ``RestBudget`` (weight, Retry-After, in-flight bound);
  while a symbol is being filled its live candles wait, so each symbol stays in order;
- ``serverShutdown`` and the 24 h limit hand over: a new connection is subscribed and
  acknowledged before the old one is closed; the per-symbol high-water mark drops the overlap;
- with a ``SymbolSelection`` the symbols come from ``exchangeInfo``, refreshed on a schedule:
  new listings are subscribed, halted or delisted ones unsubscribed and reported; each candle
  carries its symbol's price step from there (``tick_size``, for the core's thin-market floors);
- a watchdog resubscribes (and backfills) a symbol silent for more than ``stale_intervals``.

Frames that are not valid klines come out as ``Rejected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection

from market_anomaly import metrics
from market_anomaly.candles.record import Candle, MalformedCandle, Rejected
from market_anomaly.exchange import protocol
from market_anomaly.exchange.discovery import SymbolSelection, UnknownSymbols, resolve
from market_anomaly.exchange.rest import (ExponentialBackoff, RestBudget, RestRejected,  # noqa: F401 - re-exported
                                          RestUnavailable)

log = logging.getLogger("market_anomaly.exchange.client")

MAX_URL_LENGTH = 2000           # longer stream lists are sent as SUBSCRIBE messages instead of in the URL
STREAMS_PER_SUBSCRIBE = 200
# One method message per 0.5 s: 2/s, leaving 3/s of Binance's 5 for our pings and our pongs to its pings.
METHOD_PAUSE = 0.5
ACK_TIMEOUT = 10.0
SUBSCRIBE_ATTEMPTS = 4
HANDOVER_TIMEOUT = 30.0
DEFAULT_STREAMS_PER_CONNECTION = 200
LEAVING_RETRY_SECONDS = 1.0  # how often a halted symbol's REST fill is tried again until its last candle has closed


@dataclass(frozen=True)
class MethodReply:
    """The answer to a SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS; ``error`` None when it succeeded."""

    request_id: int | None
    error: str | None


@dataclass(frozen=True)
class ServerShutdown:
    """The exchange will close this connection soon (maintenance)."""


class BinanceKlineClient:
    """Closed klines of ``symbols`` (a list, or a ``SymbolSelection`` resolved from exchangeInfo) at ``interval``."""

    def __init__(self, ws_url: str, rest_url: str, symbols: Sequence[str] | SymbolSelection, interval: str,
                 seed_history: int = 0, *, resume_from: dict[str, int] | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 max_connection_age: float = 23.5 * 3600, streams_per_connection: int = DEFAULT_STREAMS_PER_CONNECTION,
                 ping_interval: float | None = 20.0, ping_timeout: float = 20.0,
                 rest_attempts: int = 8, rest_timeout: float = 10.0, rest_concurrency: int = 8,
                 weight_limit: int = protocol.WEIGHT_LIMIT_PER_MINUTE, weight_window: float = 60.0,
                 discovery_interval: float = 300.0, stale_intervals: int = 3, watchdog_period: float = 5.0):
        if isinstance(symbols, SymbolSelection):
            self.selection, self.symbols = symbols, []
        else:
            if not symbols:
                raise ValueError("no symbols to watch")
            self.selection, self.symbols = None, [symbol.upper() for symbol in symbols]
        if not 0 < streams_per_connection <= protocol.MAX_STREAMS_PER_CONNECTION:
            raise ValueError(f"streams per connection must be 1..{protocol.MAX_STREAMS_PER_CONNECTION}")
        self.ws_url = ws_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.interval = interval
        self.interval_ms = protocol.interval_ms(interval)
        self.seed_history = seed_history
        self.resume_from = dict(resume_from or {})
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.max_connection_age = max_connection_age
        self.streams_per_connection = streams_per_connection
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.rest_attempts, self.rest_timeout, self.rest_concurrency = rest_attempts, rest_timeout, rest_concurrency
        self.weight_limit, self.weight_window = weight_limit, weight_window
        self.discovery_interval = discovery_interval
        self.stale_intervals = stale_intervals
        self.watchdog_period = watchdog_period

    def candles(self) -> CandleStream:
        """Closed candles (and rejected frames) as they come: ``anext()`` them, ``aclose()`` when done."""
        return CandleStream(self)


@dataclass
class _SymbolState:
    """One symbol's high-water mark and, while REST fills a gap, the live candles waiting behind it."""

    last_open_time: int | None = None
    filling: bool = False
    pending: list[Candle] = field(default_factory=list)
    watched_since: int | None = None     # newest market time when it was (re)subscribed, for the watchdog
    from_listing: bool = False           # newly listed (or trading again unwatched): backfill its recent candles
    connection: _KlineConnection | None = None
    leaving: int = 0                     # halted or delisted: final REST fills still to run before it is forgotten
    leaving_after: int = 0               # ... once the exchange's clock has passed this (its last candle closed)


class CandleStream:
    """The async iterator ``candles()`` returns; everything starts on the first ``anext()``.

    A class rather than an async generator: ``aclose()`` must work even while an ``anext()``
    is still pending (a consumer that stops on a signal cancels that call and closes at once,
    which an async generator refuses with "already running").
    """

    _CLOSED = object()

    def __init__(self, client: BinanceKlineClient):
        self._client = client
        self._queue: asyncio.Queue = asyncio.Queue()   # unbounded: the readers must never wait for the consumer
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self._connections: set[_KlineConnection] = set()
        self._fills: asyncio.Queue[str] = asyncio.Queue()
        self._states: dict[str, _SymbolState] = {}
        self.tick_sizes: dict[str, float] = {}  # exchangeInfo's price step per symbol, stamped on its candles
        self._server_time: tuple[float, int] | None = None
        self._closed = False
        self.budget: RestBudget | None = None
        self.newest_open_time: int | None = None
        self.reconnects = 0
        self.handovers = 0
        self.dropped: dict[str, str] = {}     # symbol -> why it is no longer watched
        self._left_at: dict[str, int] = {}    # a dropped symbol's last candle, should it trade again

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
        self.budget = RestBudget(client.weight_limit, window=client.weight_window, concurrency=client.rest_concurrency,
                                 attempts=client.rest_attempts, backoff_initial=client.backoff_initial,
                                 backoff_max=client.backoff_max)
        self._spawn(self._run())

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(self._surfacing(coroutine))
        self._tasks.append(task)
        task.add_done_callback(lambda done: self._tasks.remove(done) if done in self._tasks else None)
        return task

    async def _surfacing(self, coroutine) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug, a bad URL, refused symbols: surface it to the consumer instead of hanging
            await self._queue.put(error)

    async def _run(self) -> None:
        client = self._client
        symbols = client.symbols
        if client.selection is not None:
            symbols = await self._discover(first=True)
        metrics.watch_symbols(symbols, client.interval_ms)
        for _ in range(client.rest_concurrency):
            self._spawn(self._fill_worker())
        self._add_symbols(symbols, initial=True)
        self._spawn(self._watchdog())
        if client.selection is not None:
            while True:
                await asyncio.sleep(client.discovery_interval)
                try:
                    await self._discover(first=False)
                except (RestUnavailable, RestRejected) as error:
                    log.error("symbol discovery failed, keeping the current %d symbols: %s", len(self._states), error)

    # -- discovery ---------------------------------------------------------------------------------

    async def _discover(self, first: bool) -> list[str]:
        """Resolve the selection against exchangeInfo; after the first time, apply the changes."""
        client = self._client
        info = await self.budget.get(self._session, client.rest_url, "/api/v3/exchangeInfo", {})
        listing = resolve(client.selection, info)
        self.tick_sizes = listing.tick_sizes
        if listing.unknown:
            raise UnknownSymbols(f"{client.rest_url} does not list {', '.join(listing.unknown)}; check the spelling "
                                 "(symbols as BTCUSDT) or use --symbols all --quote USDT")
        for symbol, status in listing.not_trading.items():
            if first or symbol in self._states:
                log.warning("%s is not trading (status %s); not watched until it is", symbol, status)
        if first:
            if not listing.trading:
                raise UnknownSymbols(f"no TRADING symbol for {client.selection.describe()} at {client.rest_url}")
            log.info("discovered %d TRADING symbols for %s", len(listing.trading), client.selection.describe())
            return list(listing.trading)
        trading = set(listing.trading)
        added = sorted(symbol for symbol in trading if symbol not in self._states or self._states[symbol].leaving)
        gone = sorted(symbol for symbol, state in self._states.items()
                      if symbol not in trading and not state.leaving)
        for symbol in gone:
            reason = f"status {listing.not_trading[symbol]}" if symbol in listing.not_trading else "delisted"
            self._remove_symbol(symbol, reason)
        if added:
            log.warning("newly listed, subscribing: %s", ", ".join(added))
            metrics.SYMBOLS_ADDED.inc(len(added))
            self._add_symbols(added, initial=False)
        if added or gone:
            metrics.watch_symbols(sorted(self._states), client.interval_ms)
        return list(listing.trading)

    def _add_symbols(self, symbols: list[str], initial: bool) -> None:
        client = self._client
        fresh = []
        for symbol in symbols:
            state = self._states.setdefault(symbol, _SymbolState())
            was_leaving, state.leaving = state.leaving, 0
            self.dropped.pop(symbol, None)
            state.watched_since = self.newest_open_time
            if initial and (symbol in client.resume_from or client.seed_history):
                state.last_open_time = client.resume_from.get(symbol)
                self._request_fill(symbol)
            elif not initial:
                # Listed since the start (or trading again): what closed before we subscribed comes from REST.
                state.last_open_time = state.last_open_time if was_leaving else self._left_at.pop(symbol, None)
                state.from_listing = state.last_open_time is None
                self._request_fill(symbol)
            fresh.append(symbol)
        # Fill connections that have room, then open new ones.
        for connection in sorted(self._connections, key=lambda c: len(c.symbols)):
            room = client.streams_per_connection - len(connection.symbols)
            if room > 0 and fresh and not connection.retiring:
                taken, fresh = fresh[:room], fresh[room:]
                connection.add(taken)
        for start in range(0, len(fresh), client.streams_per_connection):
            self._open_connection(fresh[start:start + client.streams_per_connection])

    def _remove_symbol(self, symbol: str, reason: str) -> None:
        """Unsubscribe a symbol the exchange no longer lists as trading. Its state stays until REST has
        filled what closed before the halt (a last candle may still be in flight or never streamed):
        two fills, since one already running may stop at a waiting live candle, and none counted before the
        exchange's clock has passed the close of the candle open when the halt was seen (unsubscribed, that last
        candle comes only from REST, once it has closed)."""
        state = self._states[symbol]
        self.dropped[symbol] = reason
        metrics.SYMBOLS_DROPPED.inc()
        log.warning("%s is no longer trading (%s): unsubscribed; last candle %s", symbol, reason,
                    state.last_open_time)
        if state.connection is not None:
            state.connection.remove([symbol])
            state.connection = None
        state.leaving = 2
        if self.newest_open_time is not None:
            state.leaving_after = self.newest_open_time + 2 * self._client.interval_ms
        self._request_fill(symbol)

    def _forget(self, symbol: str) -> None:
        state = self._states.pop(symbol)
        if state.last_open_time is not None:
            self._left_at[symbol] = state.last_open_time

    def _open_connection(self, symbols: list[str]) -> _KlineConnection:
        connection = _KlineConnection(self, symbols)
        self._connections.add(connection)
        for symbol in symbols:
            if symbol in self._states:
                self._states[symbol].connection = connection
        connection.task = self._spawn(connection.run_forever())
        return connection

    def hand_over(self, old: _KlineConnection) -> _KlineConnection:
        """A new connection for ``old``'s symbols; ``old`` closes once it is subscribed."""
        self.handovers += 1
        successor = self._open_connection(sorted(old.symbols))
        return successor

    def connection_gone(self, connection: _KlineConnection) -> None:
        self._connections.discard(connection)

    # -- candles -----------------------------------------------------------------------------------

    def deliver_live(self, candle: Candle) -> None:
        """A closed candle from a stream: in order, once; a gap before it is filled from REST first."""
        state = self._states.get(candle.symbol)
        if state is None:
            return           # unsubscribed meanwhile
        if state.filling:
            state.pending.append(candle)
            return
        last = state.last_open_time
        if last is not None and candle.open_time <= last:
            return           # the overlap of a handover, or a repeat
        if (last is None and state.from_listing) or (last is not None and
                                                     candle.open_time > last + self._client.interval_ms):
            # A gap, or a new listing's stream starting after its first candles (its backfill ran before they
            # had closed, or before the subscription took): REST brings what comes before this one.
            state.pending.append(candle)
            self._request_fill(candle.symbol)
            return
        self._emit(state, candle)

    def _emit(self, state: _SymbolState, candle: Candle) -> None:
        tick = self.tick_sizes.get(candle.symbol)
        if tick is not None:
            candle = replace(candle, tick_size=tick)
        state.last_open_time = candle.open_time
        if self.newest_open_time is None or candle.open_time > self.newest_open_time:
            self.newest_open_time = candle.open_time
        self._queue.put_nowait(candle)

    def reject(self, rejected: Rejected) -> None:
        self._queue.put_nowait(rejected)

    def _request_fill(self, symbol: str) -> None:
        state = self._states[symbol]
        if not state.filling:
            state.filling = True
            self._fills.put_nowait(symbol)

    def catch_up(self, symbols) -> None:
        """After a reconnect: fill what closed while the symbols were not streaming."""
        for symbol in symbols:
            state = self._states.get(symbol)
            if state is not None and state.last_open_time is not None:
                self._request_fill(symbol)

    async def _fill_worker(self) -> None:
        while True:
            symbol = await self._fills.get()
            state = self._states.get(symbol)
            if state is None:
                continue
            await self._fill(symbol)
            if state.leaving and not state.filling and self._states.get(symbol) is state:
                if self._server_time is not None and self._server_time[1] < state.leaving_after:
                    self._spawn(self._fill_later(symbol))  # its last candle may still be open: not a final fill
                    continue
                state.leaving -= 1
                if state.leaving:
                    self._request_fill(symbol)
                else:
                    self._forget(symbol)

    async def _fill_later(self, symbol: str) -> None:
        await asyncio.sleep(LEAVING_RETRY_SECONDS)
        if symbol in self._states:
            self._request_fill(symbol)

    async def _fill(self, symbol: str) -> None:
        """REST candles from the symbol's high-water mark up to its first waiting live candle (or up to now);
        then the waiting ones."""
        client, state = self._client, self._states[symbol]
        step = client.interval_ms
        filled, failed = 0, False
        bound = state.pending[0].open_time - step if state.pending else None
        try:
            # Up to a waiting live candle every row is closed; otherwise the exchange's clock says which are.
            server_time = await self._current_server_time() if bound is None or state.last_open_time is None else None
            if state.last_open_time is not None:
                start = state.last_open_time + step
            elif state.from_listing or client.seed_history:
                # A listing's first candles (found within a discovery interval of its start), or a pair trading
                # again after a break we never watched: a page, or what a seeded symbol gets, not its whole past
                # (Binance answers a start before the first candle from that candle: years back for an old pair).
                back = max(client.seed_history, protocol.KLINES_MAX_LIMIT) if state.from_listing else client.seed_history
                start = max(0, server_time // step * step - back * step)
            else:
                start = None
            while start is not None:
                end = bound if bound is not None else server_time
                if end < start:
                    break
                # Ask for no more rows than can exist: a small limit costs less request weight.
                limit = min(protocol.KLINES_MAX_LIMIT, (end - start) // step + 2) if start else protocol.KLINES_MAX_LIMIT
                params = {"symbol": symbol, "interval": client.interval, "startTime": start, "limit": limit}
                if bound is not None:
                    params["endTime"] = bound
                rows = await self.budget.get(self._session, client.rest_url, "/api/v3/klines", params)
                if not isinstance(rows, list):
                    self.reject(Rejected(json.dumps(rows), "klines response is not a list"))
                    break
                for row in rows:
                    try:
                        candle = Candle.from_rest_row(symbol, client.interval, row)
                    except MalformedCandle as error:
                        self.reject(Rejected(json.dumps(row), str(error)))
                        continue
                    if (bound is None and candle.close_time >= server_time) or (bound is not None
                                                                                and candle.open_time > bound):
                        start = None      # still open (Binance lists the current candle last)
                        break
                    if state.last_open_time is None or candle.open_time > state.last_open_time:
                        self._emit(state, candle)
                        filled += 1
                    start = candle.open_time + step
                if len(rows) < limit:
                    break
        except RestRejected as error:
            failed = True
            metrics.REQUESTS_REFUSED.labels(kind="rest").inc()
            log.error("%s: not backfilled, the exchange refused: %s", symbol, error)
        except (RestUnavailable, KeyError, TypeError, ValueError) as error:
            failed = True
            log.error("%s: gap from %s left unfilled: %s", symbol, state.last_open_time, error)
        finally:
            # Fill again only when that can still help: this fill worked and was not already up to a live candle
            # (or got somewhere), else the stream would loop on a gap the exchange itself has.
            self._release_pending(symbol, state, retry=not failed and (bound is None or filled > 0))

    def _release_pending(self, symbol: str, state: _SymbolState, retry: bool) -> None:
        state.filling = False
        pending, state.pending = sorted(state.pending, key=lambda candle: candle.open_time), []
        step = self._client.interval_ms
        for index, candle in enumerate(pending):
            last = state.last_open_time
            if last is not None and candle.open_time <= last:
                continue
            if last is not None and candle.open_time > last + step and retry:
                # The gap moved (REST was behind the stream): fill again up to the next waiting candle.
                state.pending = pending[index:]
                self._request_fill(symbol)
                return
            if last is not None and candle.open_time > last + step:
                log.error("%s: candles %d..%d missing (REST could not fill them)", symbol, last + step,
                          candle.open_time - step)
            self._emit(state, candle)

    async def _current_server_time(self) -> int:
        """The exchange's clock, asked at most once a second (a REST row closed before it is final)."""
        now = time.monotonic()
        if self._server_time is None or now - self._server_time[0] > 1.0:
            body = await self.budget.get(self._session, self._client.rest_url, "/api/v3/time", {})
            self._server_time = (now, int(body["serverTime"]))
        return self._server_time[1]

    # -- watchdog ----------------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Resubscribe (and backfill) symbols silent for more than ``stale_intervals`` in market time."""
        client = self._client
        allowed = client.stale_intervals * client.interval_ms
        while True:
            await asyncio.sleep(client.watchdog_period)
            newest = self.newest_open_time
            if newest is None:
                continue
            for symbol, state in list(self._states.items()):
                heard = max((time for time in (state.last_open_time, state.watched_since) if time is not None),
                            default=None)
                if heard is None:
                    state.watched_since = newest    # nothing from it yet: silent from now on
                    continue
                if state.filling or newest - heard <= allowed or state.connection is None:
                    continue
                log.warning("%s silent for %d intervals (last candle %s): resubscribing", symbol,
                            (newest - heard) // client.interval_ms, state.last_open_time)
                metrics.WATCHDOG_RESUBSCRIBES.inc()
                state.watched_since = newest
                state.connection.resubscribe(symbol)
                self.catch_up([symbol])

    async def aclose(self) -> None:
        """Stop every task and release the HTTP session; a pending ``anext()`` ends the iteration."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(asyncio.QueueFull):   # a full queue has no waiting anext() to wake
            self._queue.put_nowait(self._CLOSED)


class _KlineConnection:
    """One WebSocket connection and its tasks: reader, subscriber (paced, acknowledged), age timer."""

    _ids = itertools.count(1)

    def __init__(self, stream: CandleStream, symbols: list[str]):
        self.stream = stream
        self.client = stream._client
        self.symbols: set[str] = set(symbols)
        self.subscribed: set[str] = set()
        self.backoff = ExponentialBackoff(self.client.backoff_initial, self.client.backoff_max)
        self.methods: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self.replies: dict[int, asyncio.Future] = {}
        self.ready = asyncio.Event()          # every symbol subscribed and acknowledged
        self.leave = asyncio.Event()          # serverShutdown or the age limit: hand over
        self.retiring = False
        self.task: asyncio.Task | None = None

    def _stream(self, symbol: str) -> str:
        return protocol.stream_name(symbol, self.client.interval)

    def add(self, symbols: list[str]) -> None:
        self.symbols.update(symbols)
        for symbol in symbols:
            self.stream._states[symbol].connection = self
        self.methods.put_nowait(("SUBSCRIBE", symbols))

    def remove(self, symbols: list[str]) -> None:
        self.symbols.difference_update(symbols)
        self.methods.put_nowait(("UNSUBSCRIBE", symbols))

    def resubscribe(self, symbol: str) -> None:
        self.methods.put_nowait(("UNSUBSCRIBE", [symbol]))
        self.methods.put_nowait(("SUBSCRIBE", [symbol]))

    async def run_forever(self) -> None:
        first = True
        try:
            while self.symbols:
                try:
                    if await self._connect_and_read(first):
                        return                # handed over to a successor
                    problem = "closed by the exchange"
                except (websockets.ConnectionClosed, websockets.InvalidHandshake, OSError, TimeoutError) as error:
                    problem = str(error) or type(error).__name__
                first = False
                self.ready.clear()
                delay = self.backoff.next_delay()
                self.stream.reconnects += 1
                metrics.WEBSOCKET_RECONNECTS.inc()
                log.warning("WebSocket %s (%d streams): %s; reconnecting in %.1fs", self.client.ws_url,
                            len(self.symbols), problem, delay)
                await asyncio.sleep(delay)
        finally:
            self.stream.connection_gone(self)

    async def _connect_and_read(self, first: bool) -> bool:
        """One connection's life; True if it ended by handing over to a new connection."""
        client = self.client
        symbols = sorted(self.symbols)
        url = f"{client.ws_url}/stream?streams={'/'.join(map(self._stream, symbols))}"
        by_message = len(url) > MAX_URL_LENGTH
        # websockets answers the server's pings itself and pings the server (keepalive) to detect dead links.
        async with websockets.connect(f"{client.ws_url}/stream" if by_message else url,
                                      ping_interval=client.ping_interval, ping_timeout=client.ping_timeout,
                                      open_timeout=client.rest_timeout, max_queue=4096) as ws:
            log.info("connected to %s: %d kline streams", client.ws_url, len(symbols))
            self.subscribed = set() if by_message else set(symbols)
            self.methods = asyncio.Queue()
            if by_message:
                for start in range(0, len(symbols), STREAMS_PER_SUBSCRIBE):
                    self.methods.put_nowait(("SUBSCRIBE", symbols[start:start + STREAMS_PER_SUBSCRIBE]))
            reader = asyncio.create_task(self._read(ws))
            subscriber = asyncio.create_task(self._send_methods(ws))
            timer = asyncio.create_task(self._age_limit())
            leaving = asyncio.create_task(self.leave.wait())
            if not first:
                self.stream.catch_up(symbols)
            try:
                done, _ = await asyncio.wait({reader, subscriber, leaving}, return_when=asyncio.FIRST_COMPLETED)
                if leaving in done:
                    await self._hand_over(reader)
                    return True
                for task in done:
                    task.result()       # raises what ended the connection
                return False
            finally:
                for task in (reader, subscriber, timer, leaving):
                    task.cancel()
                await asyncio.gather(reader, subscriber, timer, leaving, return_exceptions=True)
                for future in self.replies.values():
                    future.cancel()
                self.replies.clear()

    async def _age_limit(self) -> None:
        await asyncio.sleep(self.client.max_connection_age)
        log.info("handing over before the exchange's 24 h connection limit")
        self.leave.set()

    async def _hand_over(self, reader: asyncio.Task) -> None:
        """Keep reading until the successor is subscribed, then let this connection go."""
        self.retiring = True
        successor = self.stream.hand_over(self)
        self.symbols = set()
        try:
            await asyncio.wait({reader, asyncio.create_task(successor.ready.wait())}, timeout=HANDOVER_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            log.info("handed %d streams over to a new connection", len(successor.symbols))

    async def _read(self, ws: ClientConnection) -> None:
        """Parse and hand on, never waiting for anything else, so the connection keeps up and pongs go out."""
        async for frame in ws:
            item = parse_frame(frame)
            if isinstance(item, Candle):
                self.backoff.reset()   # the connection works: the next drop starts afresh
                self.stream.deliver_live(item)
            elif isinstance(item, Rejected):
                self.stream.reject(item)
            elif isinstance(item, MethodReply):
                future = self.replies.pop(item.request_id, None)
                if future is not None and not future.done():
                    future.set_result(item)
                elif item.error:
                    log.error("the exchange refused a request: %s", item.error)
            elif isinstance(item, ServerShutdown):
                log.warning("the exchange announced a shutdown of this connection: handing over")
                self.leave.set()

    async def _send_methods(self, ws: ClientConnection) -> None:
        """Send queued SUBSCRIBE/UNSUBSCRIBEs one per METHOD_PAUSE, each acknowledged before the next."""
        while True:
            if self.methods.empty() and self.subscribed >= self.symbols:
                self.ready.set()
            method, symbols = await self.methods.get()
            if method == "SUBSCRIBE":
                symbols = [symbol for symbol in symbols if symbol in self.symbols]
            if not symbols:
                continue
            for attempt in range(1, SUBSCRIBE_ATTEMPTS + 1):
                error = await self._request(ws, method, symbols)
                await asyncio.sleep(METHOD_PAUSE)
                if error is None:
                    break
                log.warning("%s of %d streams refused (attempt %d of %d): %s", method, len(symbols), attempt,
                            SUBSCRIBE_ATTEMPTS, error)
                await asyncio.sleep(self.backoff_delay(attempt))
            else:
                metrics.REQUESTS_REFUSED.labels(kind="subscribe").inc()
                log.error("%s refused for good for %s: %s", method, ", ".join(symbols), error)
                continue
            if method == "SUBSCRIBE":
                self.subscribed.update(symbols)
            else:
                self.subscribed.difference_update(symbols)

    def backoff_delay(self, attempt: int) -> float:
        return min(self.client.backoff_max, self.client.backoff_initial * 2 ** attempt)

    async def _request(self, ws: ClientConnection, method: str, symbols: list[str]) -> str | None:
        """Send one method message; None once acknowledged, else the error (or that no answer came)."""
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        await ws.send(json.dumps({"method": method, "params": [self._stream(s) for s in symbols], "id": request_id}))
        try:
            reply = await asyncio.wait_for(future, ACK_TIMEOUT)
        except TimeoutError:
            self.replies.pop(request_id, None)
            return f"no answer in {ACK_TIMEOUT:.0f}s"
        return reply.error


def parse_frame(frame: str | bytes) -> Candle | Rejected | MethodReply | ServerShutdown | None:
    """A WebSocket frame -> a closed candle, a rejected frame, a method reply, a shutdown notice,
    or None (an open candle)."""
    text = frame.decode("utf-8", errors="replace") if isinstance(frame, bytes) else frame
    try:
        message = json.loads(text)
    except ValueError as error:
        return Rejected(text, f"invalid JSON: {error}")
    if isinstance(message, dict) and "stream" in message:
        message = message.get("data")
    if not isinstance(message, dict):
        return Rejected(text, "not a JSON object")
    if "id" in message and ("result" in message or "error" in message or "code" in message):
        request_id = message["id"]
        return MethodReply(request_id if isinstance(request_id, int) else None, protocol.method_reply_error(message))
    if message.get("e") == "serverShutdown":
        return ServerShutdown()
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
