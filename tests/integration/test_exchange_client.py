"""The simulator and the client over real localhost sockets (no Kafka): REST klines, WebSocket streams,
and the client's guarantees across drops, reconnects, garbage frames, pings and REST errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import aiohttp
import pytest
import websockets
from aiohttp import web

from market_anomaly.candles.record import Candle, Rejected
from market_anomaly.exchange.client import BinanceKlineClient, ExponentialBackoff
from market_anomaly.exchange.discovery import SymbolSelection, UnknownSymbols
from market_anomaly.exchange.market import Market, SyntheticSource
from market_anomaly.exchange.simulator import ExchangeSimulator, SimulatedClock

MINUTE = 60_000
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def simulator(symbols=SYMBOLS, speed=600.0, history=1500, **options):
    """A running simulator whose live start is the current minute; ``speed`` 600 = a candle every 0.1 s."""
    live_start = int(time.time() * 1000) // MINUTE * MINUTE
    market = Market(SyntheticSource(symbols, "1m", 7, live_start - history * MINUTE))
    sim = ExchangeSimulator(market, SimulatedClock(live_start, speed), **options)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def collect(client: BinanceKlineClient, seconds: float) -> list[Candle | Rejected]:
    items = []
    stream = client.candles()
    try:
        async with asyncio.timeout(seconds):
            async for item in stream:
                items.append(item)
    except TimeoutError:
        pass
    finally:
        await stream.aclose()
    return items


@contextlib.asynccontextmanager
async def reading(client: BinanceKlineClient):
    """The client's items, read in the background while the block acts on the exchange."""
    stream, items = client.candles(), []

    async def read():
        async for item in stream:
            items.append(item)
    reader = asyncio.create_task(read())
    try:
        yield stream, items
    finally:
        reader.cancel()
        await stream.aclose()


def by_symbol(items) -> dict[str, list[Candle]]:
    candles = defaultdict(list)
    for item in items:
        if isinstance(item, Candle):
            candles[item.symbol].append(item)
    return candles


def assert_contiguous(candles: list[Candle]) -> None:
    open_times = [candle.open_time for candle in candles]
    assert open_times == list(range(open_times[0], open_times[-1] + MINUTE, MINUTE)), "gap, duplicate or disorder"


async def get(session: aiohttp.ClientSession, url: str, **params):
    async with session.get(url, params=params) as response:
        return response.status, await response.json()


@pytest.mark.integration
def test_rest_klines_paging_limits_and_errors():
    async def scenario():
        async with simulator(speed=60.0) as sim, aiohttp.ClientSession() as session:
            klines = f"{sim.rest_url}/api/v3/klines"
            status, server = await get(session, f"{sim.rest_url}/api/v3/time")
            assert status == 200 and abs(server["serverTime"] - sim.clock.now()) < MINUTE   # 1 s real at 60x
            assert await get(session, f"{sim.rest_url}/api/v3/ping") == (200, {})

            start = sim.clock.start - 1500 * MINUTE
            status, page = await get(session, klines, symbol="BTCUSDT", interval="1m", startTime=start, limit=1000)
            assert status == 200 and len(page) == 1000 and page[0][0] == start
            status, rest = await get(session, klines, symbol="BTCUSDT", interval="1m", startTime=page[-1][0] + 1,
                                     limit=1000)
            assert rest[0][0] == page[-1][0] + MINUTE and 501 <= len(rest) <= 503   # 500 history, live, the open one
            now = sim.clock.now()
            assert all(row[6] < now for row in rest[:-1]) and rest[-1][0] <= now <= rest[-1][6], \
                "closed candles, then the still-open one (as Binance lists it)"
            assert [Candle.from_rest_row("BTCUSDT", "1m", row).open_time for row in page + rest] == \
                list(range(start, rest[-1][0] + MINUTE, MINUTE))

            status, latest = await get(session, klines, symbol="btcusdt", interval="1m")
            assert len(latest) == 500 and latest[-1][0] == rest[-1][0]   # the open one, moved on since
            status, until = await get(session, klines, symbol="BTCUSDT", interval="1m", endTime=start + 9 * MINUTE,
                                      limit=3)
            assert [row[0] for row in until] == [start + 7 * MINUTE, start + 8 * MINUTE, start + 9 * MINUTE]

            for params, code in [({"interval": "1m"}, -1102), ({"symbol": "BTCUSDT"}, -1102),
                                 ({"symbol": "NOPE", "interval": "1m"}, -1121),
                                 ({"symbol": "BTCUSDT", "interval": "7m"}, -1120),
                                 ({"symbol": "BTCUSDT", "interval": "1m", "limit": "1001"}, -1100),
                                 ({"symbol": "BTCUSDT", "interval": "1m", "startTime": "yesterday"}, -1100)]:
                status, body = await get(session, klines, **params)
                assert status == 400 and body["code"] == code and body["msg"], params
    asyncio.run(scenario())


@pytest.mark.integration
def test_raw_stream_sends_open_updates_then_the_final_candle():
    async def scenario():
        async with simulator(speed=600.0) as sim:
            async with websockets.connect(f"{sim.ws_url}/ws/ethusdt@kline_1m") as ws:
                events = [json.loads(await ws.recv()) for _ in range(9)]
        assert all(event["e"] == "kline" and event["s"] == "ETHUSDT" for event in events)
        finals = [i for i, event in enumerate(events) if event["k"]["x"]]
        assert len(finals) == 3 and all(b - a == 3 for a, b in zip(finals, finals[1:])), "2 updates, then final"
        final = events[finals[1]]
        updates = [e for e in events[finals[0] + 1:finals[1]]]
        assert [e["k"]["t"] for e in updates] == [final["k"]["t"]] * 2
        assert float(updates[0]["k"]["v"]) < float(updates[1]["k"]["v"]) < float(final["k"]["v"])
        served = sim.market.candle("ETHUSDT", final["k"]["t"])
        candle = Candle.from_kline(final["k"])
        assert (candle.open, candle.close, candle.volume, candle.trades) == (
            served["open"], served["close"], served["volume"], served["trades"])
    asyncio.run(scenario())


@pytest.mark.integration
def test_subscribe_methods_on_the_bare_endpoint():
    async def scenario():
        async with simulator(speed=600.0) as sim, websockets.connect(f"{sim.ws_url}/stream") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["solusdt@kline_1m"], "id": 1}))
            assert json.loads(await ws.recv()) == {"result": None, "id": 1}
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
            replies = [json.loads(await ws.recv()) for _ in range(8)]
            assert {"result": ["solusdt@kline_1m"], "id": 2} in replies
            assert any(reply.get("stream") == "solusdt@kline_1m" for reply in replies)
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nonsense"], "id": 3}))
            replies = [json.loads(await ws.recv()) for _ in range(8)]
            refusal = [reply for reply in replies if reply.get("id") == 3]
            assert refusal and refusal[0]["code"] == 2 and refusal[0]["msg"].startswith("Invalid request"), \
                "Binance's flat error shape"
    asyncio.run(scenario())


@pytest.mark.integration
def test_client_yields_closed_candles_once_in_order_across_drops():
    async def scenario():
        async with simulator(speed=600.0, drop_every=10) as sim:
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SYMBOLS, "1m", backoff_initial=0.1)
            items = await collect(client, 4.0)
            return sim, items
    sim, items = asyncio.run(scenario())
    assert sim.connections_served >= 4, "the drops happened"
    candles = by_symbol(items)
    assert set(candles) == set(SYMBOLS)
    for symbol, series in candles.items():
        assert len(series) >= 20
        assert_contiguous(series)
        assert {"ws", "rest"} <= {candle.source for candle in series}, "gaps were backfilled from REST"
        served = sim.market.candle(symbol, series[-1].open_time)
        assert (series[-1].close, series[-1].volume) == (served["close"], served["volume"])
    assert not [item for item in items if isinstance(item, Rejected)]


@pytest.mark.integration
def test_client_seeds_history_and_rejects_garbage_frames():
    async def scenario():
        async with simulator(speed=300.0, malformed_every=4) as sim:
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SYMBOLS[:2], "1m", seed_history=1200)
            return await collect(client, 2.5)
    items = asyncio.run(scenario())
    for symbol, series in by_symbol(items).items():
        seeded = [candle for candle in series if candle.source == "rest"]
        assert len(seeded) == 1200, symbol                  # paged through limit=1000
        assert series[:1200] == seeded
        assert_contiguous(series)
        assert len(series) > 1200, "live candles follow the seed"
    rejected = [item for item in items if isinstance(item, Rejected)]
    assert len(rejected) >= 3 and all(item.reason and item.raw for item in rejected)


@pytest.mark.integration
def test_client_splits_streams_over_connections_and_reconnects_before_the_age_limit():
    async def scenario():
        async with simulator(speed=600.0) as sim:
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SYMBOLS, "1m", streams_per_connection=2,
                                        max_connection_age=0.8)
            return sim, await collect(client, 3.0)
    sim, items = asyncio.run(scenario())
    assert sim.connections_served >= 6          # 2 connections, each renewed every 0.8 s
    for series in by_symbol(items).values():
        assert_contiguous(series)
        assert len(series) >= 20


@pytest.mark.integration
def test_client_subscribes_by_message_when_the_url_would_be_too_long():
    symbols = [f"SYM{i:03d}USDT" for i in range(120)]

    async def scenario():
        async with simulator(symbols, speed=60.0, history=5) as sim:
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, symbols, "1m")
            return sim, await collect(client, 3.0)
    sim, items = asyncio.run(scenario())
    assert sim.connections_served == 1
    assert set(by_symbol(items)) == set(symbols)


@pytest.mark.integration
def test_client_answers_server_pings_and_survives_server_disconnects():
    async def scenario():
        async with simulator(speed=120.0, heartbeat=0.2, max_connection_age=1.2) as sim:
            # The client sends no pings of its own: the connection stays up only if it answers the server's.
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SYMBOLS[:1], "1m", ping_interval=None,
                                        backoff_initial=0.1)
            return sim, await collect(client, 2.0)
    sim, items = asyncio.run(scenario())
    assert sim.connections_served == 2, "one connection per server age limit, none lost to unanswered pings"
    assert_contiguous(by_symbol(items)["BTCUSDT"])


@pytest.mark.integration
def test_rest_errors_are_retried_respecting_retry_after():
    calls = defaultdict(int)

    async def scenario():
        async with simulator(speed=60.0) as sim, aiohttp.ClientSession() as upstream:
            async def flaky(request: web.Request) -> web.Response:
                calls[request.path] += 1
                if request.path.endswith("/time") and calls[request.path] == 1:
                    return web.json_response({"code": -1003, "msg": "Too many requests."}, status=429,
                                             headers={"Retry-After": "1"})
                if request.path.endswith("/klines") and calls[request.path] == 1:
                    return web.json_response({"code": -1001, "msg": "Internal error."}, status=503)
                _, body = await get(upstream, sim.rest_url + request.path, **request.query)
                return web.json_response(body)

            app = web.Application()
            app.router.add_get("/api/v3/{name}", flaky)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            try:
                client = BinanceKlineClient(sim.ws_url, f"http://127.0.0.1:{runner.addresses[0][1]}", ["ETHUSDT"],
                                            "1m", seed_history=5, backoff_initial=0.05)
                started = time.monotonic()
                stream = client.candles()
                first = await asyncio.wait_for(anext(stream), 10)
                waited = time.monotonic() - started
                await stream.aclose()
            finally:
                await runner.cleanup()
            return first, waited
    first, waited = asyncio.run(scenario())
    assert first.source == "rest" and waited >= 1.0, "waited for Retry-After"
    assert calls["/api/v3/time"] == 2 and calls["/api/v3/klines"] == 2


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets():
    backoff = ExponentialBackoff(0.5, 4.0)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4]):
        assert nominal / 2 <= delay <= nominal
    backoff.reset()
    assert backoff.next_delay() <= 0.5


@pytest.mark.integration
def test_exchange_command_serves_and_writes_labels(tmp_path):
    labels_path = tmp_path / "labels.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "market_anomaly", "exchange", "--port", "0", "--symbols", "BTCUSDT,ETHUSDT",
         "--history", "30", "--inject", "flash_crash:ETHUSDT:20", "--inject-random", "4",
         "--labels-out", str(labels_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"exchange simulator listening: (ws://127\.0\.0\.1:\d+) rest (http://127\.0\.0\.1:\d+)\n",
                             line)
        assert match, line

        async def latest_closed():
            async with aiohttp.ClientSession() as session:
                return await get(session, f"{match[2]}/api/v3/klines", symbol="ETHUSDT", interval="1m")
        status, rows = asyncio.run(latest_closed())
        assert status == 200 and len(rows) >= 30    # the history, and the live candles closed since
        labels = json.loads(labels_path.read_text())
        assert len(labels) == 5 and {"symbol", "kind", "open_time", "end_time"} <= set(labels[0])
        live_start = rows[0][0] + 30 * MINUTE
        expected = {"symbol": "ETHUSDT", "kind": "flash_crash", "open_time": live_start + 20 * MINUTE}
        assert any(expected.items() <= label.items() for label in labels)
        assert all(label["open_time"] >= live_start + 15 * MINUTE for label in labels)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


@pytest.mark.integration
def test_stream_closes_while_a_read_is_pending_and_surfaces_fatal_errors():
    async def scenario():
        async with simulator(speed=60.0) as sim:
            stream = BinanceKlineClient(sim.ws_url, sim.rest_url, ["BTCUSDT"], "1m").candles()
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.3)
            pending.cancel()
            await stream.aclose()    # what the producer does on SIGTERM; an async generator refuses it
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
        broken = BinanceKlineClient("nowhere", "http://127.0.0.1:9", ["BTCUSDT"], "1m").candles()
        with pytest.raises(websockets.InvalidURI):
            await asyncio.wait_for(anext(broken), 10)
    asyncio.run(scenario())


@pytest.mark.integration
def test_client_fills_a_candle_the_stream_skipped_from_rest_without_reconnecting():
    async def scenario():
        async with simulator(speed=600.0) as sim:
            publish = sim._publish

            def skip_every_fifth_close(open_time, fraction, final):
                if not (final and open_time // MINUTE % 5 == 0):
                    publish(open_time, fraction, final)
            sim._publish = skip_every_fifth_close
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SYMBOLS[:2], "1m")
            return sim, await collect(client, 3.0)
    sim, items = asyncio.run(scenario())
    assert sim.connections_served == 1
    for series in by_symbol(items).values():
        assert_contiguous(series)
        filled = [candle for candle in series if candle.source == "rest"]
        assert len(filled) >= 3 and all(candle.open_time // MINUTE % 5 == 0 for candle in filled)


@pytest.mark.integration
def test_every_candle_carries_its_symbols_tick_size_from_exchange_info():
    ticks = {"BTCUSDT": 0.01, "XRPUSDT": 0.0001, "DOGEUSDT": 0.00001}  # the simulator's price decimals

    async def scenario():
        async with simulator(symbols=list(ticks), speed=300.0) as sim:
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SymbolSelection(symbols=tuple(ticks)), "1m",
                                        seed_history=20)
            return await collect(client, 2.0)
    candles = by_symbol(asyncio.run(scenario()))
    for symbol, tick in ticks.items():
        series = candles[symbol]
        assert {candle.source for candle in series} == {"rest", "ws"}, symbol  # backfilled and live alike
        assert {candle.tick_size for candle in series} == {tick}, symbol
        assert all(abs(candle.close / tick - round(candle.close / tick)) < 1e-6 for candle in series), symbol


@pytest.mark.integration
def test_a_halted_pairs_last_candle_comes_from_rest_once_it_has_closed():
    async def scenario():
        async with simulator(speed=20.0, history=30) as sim:  # an interval is 3 s
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SymbolSelection(quotes=("USDT",)), "1m",
                                        discovery_interval=0.2)
            async with reading(client) as (_, items):
                await asyncio.sleep(2.0)
                while sim.clock.now() % MINUTE > MINUTE // 10:  # just after a close: the last candle stays open ~3 s
                    await asyncio.sleep(0.02)
                sim.halt("ETHUSDT")  # seen within 0.2 s, long before its last candle closes
                await asyncio.sleep(7.0)
            return items, sim.halted_from["ETHUSDT"]
    items, halted_from = asyncio.run(scenario())
    halted = by_symbol(items)["ETHUSDT"]
    assert halted[-1].open_time == halted_from - MINUTE, "the last candle before the halt"
    assert_contiguous(halted)
    assert by_symbol(items)["BTCUSDT"][-1].open_time >= halted_from  # the others go on


@pytest.mark.integration
def test_a_listing_subscribed_late_gets_its_first_candles_from_rest():
    async def scenario():
        async with simulator(symbols=[*SYMBOLS, "NEWUSDT"], speed=60.0, history=30, unlisted=("NEWUSDT",)) as sim:
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SymbolSelection(quotes=("USDT",)), "1m",
                                        discovery_interval=0.2, backoff_initial=1.0)
            async with reading(client) as (_, items):
                await asyncio.sleep(2.0)
                sim.refuse_subscribes = 2  # its stream starts 2 + 4 s late; its backfill ran before any candle closed
                sim.list_symbol("NEWUSDT")
                await asyncio.sleep(10.0)
            return items, sim.listed_from["NEWUSDT"]
    items, listed_from = asyncio.run(scenario())
    listing = by_symbol(items)["NEWUSDT"]
    assert listing[0].open_time == listed_from, "from its first candle"
    assert_contiguous(listing)
    sources = [candle.source for candle in listing]
    assert sources[:3] == ["rest"] * 3 and sources[-1] == "ws", sources


@pytest.mark.integration
def test_a_pair_trading_again_after_a_break_it_was_never_watched_in_gets_its_recent_candles_not_its_past():
    """Binance answers a start before a pair's first candle from that candle: a backfill "from the listing" of an
    old pair that returns from a break would bring its whole history (years of minutes, thousands of requests)."""
    pages = 3  # the simulator's market: three pages of candles before the break

    async def scenario():
        async with simulator(speed=60.0, history=pages * 1000) as sim:
            sim.halt("ETHUSDT")  # in its break before the client starts: never watched
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SymbolSelection(quotes=("USDT",)), "1m",
                                        discovery_interval=0.2)
            async with reading(client) as (_, items):
                await asyncio.sleep(2.0)
                sim.resume("ETHUSDT")
                await asyncio.sleep(6.0)
            return items, sim.halted_from["ETHUSDT"], sim.resumed_from["ETHUSDT"]
    items, halted_from, resumed_from = asyncio.run(scenario())
    candles = by_symbol(items)["ETHUSDT"]
    assert_contiguous([candle for candle in candles if candle.open_time >= resumed_from])
    assert any(candle.open_time < halted_from for candle in candles), "the page reaches back before its break"
    assert resumed_from - candles[0].open_time <= 1010 * MINUTE, "one page back from its return, not its first candle"
    assert candles[-1].open_time > resumed_from and candles[-1].source == "ws", "then live"


@pytest.mark.integration
def test_unknown_explicit_symbols_are_refused_at_start_with_a_clear_message():
    async def scenario():
        async with simulator(speed=60.0) as sim:
            stream = BinanceKlineClient(sim.ws_url, sim.rest_url, SymbolSelection(symbols=("BTCUSDT", "BTCUSTD")),
                                        "1m").candles()
            with pytest.raises(UnknownSymbols, match="does not list BTCUSTD"):
                await asyncio.wait_for(anext(stream), 10)
    asyncio.run(scenario())


@pytest.mark.integration
def test_refused_subscribes_are_retried_until_acknowledged():
    symbols = [f"SYM{i:03d}USDT" for i in range(120)]    # too long for a URL: subscribed by message

    async def scenario():
        async with simulator(symbols, speed=120.0, history=5) as sim:
            sim.refuse_subscribes = 2
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, symbols, "1m", backoff_initial=0.1)
            return sim, await collect(client, 5.0)
    sim, items = asyncio.run(scenario())
    assert sim.refuse_subscribes == 0 and sim.connections_served == 1
    assert set(by_symbol(items)) == set(symbols), "every stream flowed after the retries"


@pytest.mark.integration
def test_server_shutdown_hands_over_without_gap_or_duplicate():
    async def scenario():
        async with simulator(speed=600.0) as sim:
            client = BinanceKlineClient(sim.ws_url, sim.rest_url, SYMBOLS, "1m")
            async with reading(client) as (stream, items):
                await asyncio.sleep(1.5)
                await sim.server_shutdown(grace=1.0)
                await asyncio.sleep(1.5)
            return sim, stream, items
    sim, stream, items = asyncio.run(scenario())
    assert stream.handovers == 1 and stream.reconnects == 0 and sim.connections_served == 2
    for series in by_symbol(items).values():
        assert_contiguous(series)
        assert {candle.source for candle in series} == {"ws"}, "no gap to fill: the new connection was up first"
