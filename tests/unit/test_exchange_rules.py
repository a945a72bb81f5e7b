"""Binance's protocol rules, one by one, on both sides: the simulator enforces them, the client keeps them."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from market_anomaly.exchange import protocol
from market_anomaly.exchange.client import STREAMS_PER_SUBSCRIBE, METHOD_PAUSE, BinanceKlineClient
from market_anomaly.exchange.discovery import SymbolSelection, resolve
from market_anomaly.exchange.rest import RestBudget, RestRejected, RestUnavailable
from market_anomaly.exchange.simulator import TRANSIT_GRACE, RequestWeights, Subscriber


class FakeResponse:
    def __init__(self, status: int, body, headers=None):
        self.status, self._body, self.headers = status, body, headers or {}

    async def json(self, content_type=None):
        return self._body


class FakeSession:
    """Answers GETs from a script of (status, body, headers), recording when each was asked."""

    def __init__(self, script):
        self.script = list(script)
        self.asked: list[float] = []

    @contextlib.asynccontextmanager
    async def get(self, url, params=None):
        self.asked.append(time.monotonic())
        status, body, headers = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        yield FakeResponse(status, body, headers)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_429_makes_every_caller_wait_out_retry_after_and_is_not_a_failure():
    session = FakeSession([(429, {"code": -1003, "msg": "Too many requests."}, {"Retry-After": "1"}),
                           (200, [1], {protocol.USED_WEIGHT_HEADER: "3"})])

    async def scenario():
        budget = RestBudget(attempts=1)
        started = time.monotonic()
        results = await asyncio.gather(*(budget.get(session, "http://x", "/api/v3/klines", {"limit": 5})
                                         for _ in range(3)))
        return budget, started, results
    budget, started, results = run(scenario())
    assert results == [[1], [1], [1]], "attempts=1, yet the 429 was retried: it is not a failure"
    assert budget.rate_limited == 1, "one 429, then everybody waited"
    assert all(asked >= started + 1.0 for asked in session.asked[1:]), "nobody asked again before Retry-After"


def test_other_4xx_are_refused_at_once_and_5xx_are_retried_with_backoff():
    refused = FakeSession([(400, {"code": -1121, "msg": "Invalid symbol."}, {})])
    with pytest.raises(RestRejected, match="-1121"):
        run(RestBudget(attempts=8).get(refused, "http://x", "/api/v3/klines", {"symbol": "NOPE"}))
    assert len(refused.asked) == 1, "a bad symbol stays bad: not retried"

    flaky = FakeSession([(503, {"code": -1001}, {}), (502, "bad gateway", {}), (200, {"serverTime": 5}, {})])
    assert run(RestBudget(attempts=3, backoff_initial=0.01).get(flaky, "http://x", "/api/v3/time", {})) == \
        {"serverTime": 5}
    down = FakeSession([(503, {"code": -1001}, {})])
    with pytest.raises(RestUnavailable, match="failed 2 times"):
        run(RestBudget(attempts=2, backoff_initial=0.01).get(down, "http://x", "/api/v3/time", {}))


def test_the_used_weight_header_holds_requests_back_until_the_window_turns():
    session = FakeSession([(200, [], {protocol.USED_WEIGHT_HEADER: "79"})])

    async def scenario():
        budget = RestBudget(100, window=1.0, share=0.8)       # 80 allowed per 1 s window
        await budget.get(session, "http://x", "/api/v3/time", {})
        window = budget.window_start
        await budget.get(session, "http://x", "/api/v3/klines", {"limit": 200})   # weight 2: 81 > 80
        return window, budget.window_start
    first_window, second_window = run(scenario())
    assert second_window > first_window, "the second request waited for the next window"


def test_request_weights_of_binance():
    assert protocol.request_weight("/api/v3/klines", {"limit": "50"}) == 1
    assert protocol.request_weight("/api/v3/klines", {}) == 5      # the default limit, 500
    assert protocol.request_weight("/api/v3/klines", {"limit": 1000}) == 5
    assert protocol.request_weight("/api/v3/exchangeInfo", {}) == 20
    assert protocol.request_weight("/api/v3/time", {}) == 1


def test_simulator_answers_429_past_the_limit_and_bans_who_ignores_retry_after():
    weights = RequestWeights(limit=10, window=60.0)
    now = 6000.0
    assert weights.charge(10, now) == (200, None)
    status, retry = weights.charge(1, now + 1)
    assert status == 429 and retry == pytest.approx(59.0)
    weights.retry_after_since, weights.retry_after_until = now + 1, now + 1 + retry
    assert weights.charge(1, now + 1 + TRANSIT_GRACE / 2)[0] == 429, "already on the wire: no ban yet"
    assert weights.charge(1, now + 2)[0] == 418 and weights.bans == 1
    assert weights.charge(1, now + 61)[0] == 200, "a new minute, a new budget"


def test_simulator_closes_a_connection_past_five_messages_a_second():
    subscriber = Subscriber(combined=True, streams=set())
    assert not any(subscriber.over_inbound_limit() for _ in range(protocol.MAX_INBOUND_MESSAGES_PER_SECOND))
    assert subscriber.over_inbound_limit()


def test_client_pacing_stays_under_the_inbound_limit_with_room_for_pings_and_pongs():
    method_messages_per_second = 1 / METHOD_PAUSE
    assert method_messages_per_second + 2 < protocol.MAX_INBOUND_MESSAGES_PER_SECOND   # a ping and a pong a second
    assert STREAMS_PER_SUBSCRIBE <= protocol.MAX_STREAMS_PER_CONNECTION


def test_method_replies_flat_and_nested_errors():
    assert protocol.method_reply_error({"result": None, "id": 1}) is None
    assert protocol.method_reply_error({"code": 2, "msg": "Invalid request: x", "id": 1}) == "code 2: Invalid request: x"
    assert protocol.method_reply_error({"error": {"code": 1, "msg": "y"}, "id": 1}) == "code 1: y"
    assert protocol.error_body(2, "m", 7) == {"code": 2, "msg": "m", "id": 7}
    assert protocol.error_body(-1121, "Invalid symbol.") == {"code": -1121, "msg": "Invalid symbol."}


def test_selection_by_quote_and_explicit_symbols():
    info = {"symbols": [protocol.symbol_info("BTCUSDT", "TRADING"), protocol.symbol_info("ETHBTC", "TRADING"),
                        protocol.symbol_info("LUNAUSDT", "BREAK"), protocol.symbol_info("BNBFDUSD", "TRADING")]}
    assert resolve(SymbolSelection(quotes=("USDT",)), info).trading == ("BTCUSDT",)
    assert resolve(SymbolSelection(quotes=("USDT", "BTC")), info).not_trading == {"LUNAUSDT": "BREAK"}
    assert resolve(SymbolSelection(quotes=("FDUSD",)), info).trading == ("BNBFDUSD",)
    explicit = resolve(SymbolSelection(symbols=("ETHBTC", "BTCUSTD")), info)
    assert explicit.trading == ("ETHBTC",) and explicit.unknown == ("BTCUSTD",)
    assert SymbolSelection(quotes=("BTC",)).matches("ETHBTC") and not SymbolSelection(quotes=("BTC",)).matches("BTCUSDT")
    with pytest.raises(ValueError):
        SymbolSelection()


def test_client_refuses_impossible_connection_sizes():
    with pytest.raises(ValueError, match="1..1024"):
        BinanceKlineClient("ws://x", "http://x", ["BTCUSDT"], "1m", streams_per_connection=2000)


def test_simulated_listings_halts_and_quiet_pairs():
    from market_anomaly.exchange.market import Market, SyntheticSource, partial_candle
    from market_anomaly.exchange.simulator import ExchangeSimulator, SimulatedClock

    start = 1_700_000_040_000
    market = Market(SyntheticSource(["BTCUSDT", "QUIETUSDT", "NEWUSDT"], "1m", 7, start - 60 * 60_000))
    sim = ExchangeSimulator(market, SimulatedClock(start, 1.0), quiet=("QUIETUSDT",), unlisted=("NEWUSDT",))
    assert (sim.status("BTCUSDT"), sim.status("NEWUSDT"), sim.status("NOPE")) == ("TRADING", None, None)
    quiet = sim.candle("QUIETUSDT", start - 60_000)
    assert quiet["trades"] == 0 and quiet["volume"] == 0 and quiet["high"] == quiet["low"] == quiet["close"]
    assert partial_candle(quiet, 0.5)["trades"] == 0, "a quiet candle stays without trades while open"
    sim.halt("BTCUSDT")
    assert sim.status("BTCUSDT") == "BREAK" and sim.candle("BTCUSDT", start) is not None   # the open one closes
    assert sim.candle("BTCUSDT", start + 60_000) is None
    sim.list_symbol("NEWUSDT")
    assert sim.status("NEWUSDT") == "TRADING" and sim.candle("NEWUSDT", start) is None
    assert sim.candle("NEWUSDT", start + 60_000) is not None
