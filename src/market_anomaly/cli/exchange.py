"""`market-anomaly exchange`: a Binance-compatible exchange simulator on localhost.

Serves kline WebSocket streams (/stream?streams=..., /ws/<stream>, SUBSCRIBE) and REST
/api/v3/klines, /api/v3/time, /api/v3/ping over a simulated market: a synthetic market with
volatility clustering and fat tails, or real candle files replayed (--replay). The clock
starts now (or, with --replay, at the first candle after the history) and runs --speed times
faster than real time; --history candles before it are available from REST at once.
Labelled anomalies can be injected (--inject, --inject-random) and their labels written out
(--labels-out) to measure detection. Fault switches (--drop-every, --malformed-every) exercise
the client's reconnect and dead-letter paths. Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from pathlib import Path

import numpy as np

from market_anomaly import config
from market_anomaly.cli import options
from market_anomaly.exchange import protocol
from market_anomaly.exchange.market import (MINUTE_MS, Injection, Market, ReplaySource, SyntheticSource,
                                            random_injections)
from market_anomaly.exchange.simulator import ExchangeSimulator, SimulatedClock

log = logging.getLogger("market_anomaly.exchange")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "exchange", help="run the Binance-compatible exchange simulator (WebSocket klines + REST)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--symbols", default=None,
                        help="comma-separated symbols of the synthetic market (env MARKET_ANOMALY_SYMBOLS; default: "
                             f"{config.DEFAULT_SYMBOLS}); with --replay the files decide")
    parser.add_argument("--pairs", type=options.positive_int, default=None, metavar="N",
                        help="instead of --symbols, N synthetic pairs P0000USDT, P0001USDT, ... (every 20th quoted "
                             "in BTC), as many as Binance lists")
    parser.add_argument("--interval", default="1m", type=options.kline_interval,
                        help="kline interval (default: %(default)s; 1s, 1m, 3m, 5m, 15m, 30m, 1h ... 3d, 1w)")
    parser.add_argument("--speed", type=float, default=60.0,
                        help="simulated seconds per real second (default: %(default)s: a 1m candle per second)")
    parser.add_argument("--history", type=int, default=1000, metavar="N",
                        help="candles per symbol before the start, available from REST (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="random seed; same seed, same market (default: %(default)s)")
    parser.add_argument("--replay", nargs="+", type=Path, metavar="CSV",
                        help="replay candle files (timestamp,open,high,low,close,volume; symbol from a 'symbol' "
                             "column or the file name, e.g. BTCUSDT_1m.csv) instead of the synthetic market")
    parser.add_argument("--inject", action="append", default=[], type=parse_injection, metavar="KIND:SYMBOL:MINUTE",
                        help="inject an anomaly into SYMBOL's candle MINUTE minutes after the start (kinds: "
                             "price_spike, volume_burst, volatility_burst, flash_crash, pump_and_dump); repeatable")
    parser.add_argument("--inject-random", type=int, default=0, metavar="N",
                        help="N random injections over the first hour, from 15 minutes after the start, at least "
                             "10 minutes apart per symbol (default: %(default)s)")
    parser.add_argument("--labels-out", type=Path, metavar="FILE",
                        help="write the injections as JSON [{symbol, kind, open_time, end_time, magnitude}]")
    parser.add_argument("--updates-per-candle", type=int, default=2, metavar="N",
                        help="still-open kline updates (x=false) sent before each final one (default: %(default)s)")
    parser.add_argument("--rest-latency", type=float, default=0.0, metavar="SECONDS",
                        help="answer every REST request this much later (default: %(default)s)")
    parser.add_argument("--weight-limit", type=options.positive_int, default=protocol.WEIGHT_LIMIT_PER_MINUTE,
                        metavar="N", help="REQUEST_WEIGHT per minute before 429s (default: %(default)s)")
    parser.add_argument("--halted", default="", metavar="SYMBOLS",
                        help="comma-separated symbols listed with status BREAK from the start (no candles)")
    parser.add_argument("--unlisted", default="", metavar="SYMBOLS",
                        help="comma-separated symbols simulated but not listed until POST /sim/list (with --control)")
    parser.add_argument("--quiet", default="", metavar="SYMBOLS",
                        help="comma-separated symbols whose candles have no trades (flat, zero volume)")
    parser.add_argument("--control", action="store_true",
                        help="serve POST /sim/{halt,list,storm,shutdown,cut} and GET /sim/report, for tests and "
                             "benchmarks (never expose it)")
    parser.add_argument("--drop-every", type=int, default=None, metavar="N",
                        help="fault: close every WebSocket connection after N messages")
    parser.add_argument("--malformed-every", type=int, default=None, metavar="N",
                        help="fault: send a garbage frame after every N messages")
    parser.set_defaults(handler=run)


def parse_injection(text: str) -> tuple[str, str, float]:
    """``KIND:SYMBOL:MINUTE`` -> (kind, SYMBOL, minute)."""
    from market_anomaly.training.injection import KINDS

    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not KIND:SYMBOL:MINUTE")
    kind, symbol, minute = parts
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        return kind, symbol.upper(), float(minute)
    except ValueError:
        raise argparse.ArgumentTypeError(f"minute {minute!r} is not a number") from None


def synthetic_pairs(count: int) -> list[str]:
    """``count`` pair names, every 20th quoted in BTC: ``P0000BTC``, ``P0001USDT``, ..."""
    return [f"P{i:04d}{'BTC' if i % 20 == 0 else 'USDT'}" for i in range(count)]


def build_market(args: argparse.Namespace) -> tuple[Market, int]:
    """The market the arguments describe, with its injections applied, and the live start (ms)."""
    step = protocol.interval_ms(args.interval)
    if args.replay:
        source = ReplaySource(args.replay, args.interval, args.seed)
        live_start = source.live_start(args.history)
    else:
        symbols = synthetic_pairs(args.pairs) if args.pairs else \
            config.parse_symbols(args.symbols or config.env("SYMBOLS", config.DEFAULT_SYMBOLS))
        symbols += [symbol for symbol in config.parse_symbols(args.unlisted) if symbol not in symbols]
        live_start = int(time.time() * 1000) // step * step
        source = SyntheticSource(symbols, args.interval, args.seed, live_start - args.history * step)
    injections = [Injection(symbol, kind, live_start + int(minute * MINUTE_MS) // step * step)
                  for kind, symbol, minute in args.inject if symbol in source.symbols]
    if len(injections) < len(args.inject):
        raise SystemExit(f"exchange: --inject names a symbol that is not simulated ({', '.join(source.symbols)})")
    if args.inject_random:
        from market_anomaly.training.injection import KINDS

        injections += random_injections(source.symbols, KINDS, args.inject_random, live_start, args.interval,
                                        np.random.default_rng([args.seed, 2]), planned=injections)
    return Market(source, injections, seed=args.seed), live_start


def run(args: argparse.Namespace) -> int:
    market, live_start = build_market(args)
    if args.labels_out:
        args.labels_out.parent.mkdir(parents=True, exist_ok=True)
        args.labels_out.write_text(json.dumps(market.labels, indent=1))
        log.info("%d injection labels written to %s", len(market.labels), args.labels_out)
    asyncio.run(serve(args, market, SimulatedClock(live_start, args.speed)))
    return 0


async def serve(args: argparse.Namespace, market: Market, clock: SimulatedClock) -> None:
    simulator = ExchangeSimulator(market, clock, updates_per_candle=args.updates_per_candle,
                                  drop_every=args.drop_every, malformed_every=args.malformed_every,
                                  rest_latency=args.rest_latency, weight_limit=args.weight_limit,
                                  halted=tuple(config.parse_symbols(args.halted)),
                                  unlisted=tuple(config.parse_symbols(args.unlisted)),
                                  quiet=tuple(config.parse_symbols(args.quiet)), control=args.control)
    await simulator.start(args.host, args.port)
    print(f"exchange simulator listening: {simulator.ws_url} rest {simulator.rest_url}", flush=True)
    log.info("serving %d symbols (%s) x %s klines, %s market from %s UTC at %gx; %d candles of history each",
             len(market.symbols), ",".join(market.symbols[:10]) + (",..." if len(market.symbols) > 10 else ""),
             market.interval,
             "replayed" if args.replay else "synthetic", _utc(clock.start), clock.speed, args.history)
    for label in market.labels:
        log.info("anomaly %s in %s at %s UTC", label["kind"], label["symbol"], _utc(label["open_time"]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("exchange simulator stopping after %d connections", simulator.connections_served)
        await simulator.stop()


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))
