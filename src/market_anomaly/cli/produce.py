"""`market-anomaly produce`: Binance kline WebSocket -> Kafka ``crypto-candles``, keyed by symbol.

One JSON message per closed candle (see docs/ARCHITECTURE.md). The idempotent producer
with ``acks=all`` means a retried send is never written twice; frames that cannot be
turned into a candle go to the dead-letter topic with the reason. SIGINT/SIGTERM flush
what is in flight and exit 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from market_anomaly import config
from market_anomaly.cli import options
from market_anomaly.exchange.discovery import SymbolSelection
from market_anomaly.producer import service


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "produce", help="stream closed candles from a Binance-compatible WebSocket into Kafka",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_produce_arguments(parser)
    parser.set_defaults(handler=run)


def add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_kafka_arguments(parser)
    add_exchange_url_arguments(parser)
    parser.add_argument("--symbols", default=config.env("SYMBOLS", config.DEFAULT_SYMBOLS),
                        help="comma-separated symbols, checked against the exchange's exchangeInfo at start, or "
                             "'all' for every TRADING pair of --quote (env MARKET_ANOMALY_SYMBOLS; default: "
                             "%(default)s)")
    parser.add_argument("--quote", default=None, metavar="ASSETS",
                        help="with --symbols all: comma-separated quote assets, e.g. USDT or USDT,BTC (default: USDT)")
    parser.add_argument("--interval", default="1m", type=options.kline_interval,
                        help="kline interval, any Binance offers: 1s, 1m ... 1d, 3d, 1w, 1M (default: %(default)s)")
    parser.add_argument("--topic", default=config.env("CANDLES_TOPIC", config.CANDLES_TOPIC),
                        help="destination topic (default: %(default)s)")
    parser.add_argument("--dead-letter-topic", default=config.DEAD_LETTER_TOPIC,
                        help="where malformed frames go (default: %(default)s)")
    parser.add_argument("--seed-history", type=int, default=0, metavar="N",
                        help="first produce the last N closed candles per symbol from REST, so detection is "
                             "warm from the first live candle (default: 0)")
    parser.add_argument("--seed-file", type=Path, nargs="+", default=[], metavar="FILE",
                        help="first produce these symbols' candles from candle files (CSV/Parquet as for `score`; "
                             "source=file), e.g. a long history so detection is warm from the first live candle")
    parser.add_argument("--max-candles", type=int, default=None,
                        help="stop after producing this many candles (tests, benchmarks)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="do not continue each symbol from its last candle already in the topic (by default a "
                             "restarted producer backfills exactly what it missed)")
    parser.add_argument("--streams-per-connection", type=options.positive_int, default=200, metavar="N",
                        help="kline streams per WebSocket connection, at most 1024 (default: %(default)s)")
    parser.add_argument("--discovery-interval", type=float, default=300.0, metavar="SECONDS",
                        help="how often exchangeInfo is read again for new listings and halts (default: %(default)s)")
    parser.add_argument("--stale-intervals", type=options.positive_int, default=3, metavar="N",
                        help="resubscribe and report a symbol silent for more than N intervals (default: %(default)s)")
    options.add_metrics_arguments(parser)


def add_exchange_url_arguments(parser: argparse.ArgumentParser) -> None:
    """Which Binance-compatible exchange: the real one, Binance US, the testnet, a mirror, the simulator."""
    parser.add_argument("--ws-url", default=config.env("WS_URL", config.BINANCE_WS_URL),
                        help="Binance-compatible WebSocket base URL, e.g. wss://stream.binance.us:9443 or "
                             "wss://stream.testnet.binance.vision (env MARKET_ANOMALY_WS_URL; default: the real "
                             "Binance %(default)s; the simulator prints its own)")
    parser.add_argument("--rest-url", default=config.env("REST_URL", config.BINANCE_REST_URL),
                        help="REST base URL for exchangeInfo and backfill, e.g. https://api.binance.us or "
                             "https://testnet.binance.vision (env MARKET_ANOMALY_REST_URL; default: %(default)s)")


def symbol_selection(symbols: str, quote: str | None) -> SymbolSelection:
    """``--symbols`` and ``--quote`` as one selection; usage errors as one line."""
    names = config.parse_symbols(symbols)
    if names == ["ALL"]:
        return SymbolSelection(quotes=tuple(config.parse_symbols(quote or "USDT")) or ("USDT",))
    if not names:
        raise SystemExit("produce: --symbols is empty")
    if quote is not None:
        raise SystemExit("produce: --quote goes with --symbols all")
    return SymbolSelection(symbols=tuple(names))


def produce_config(args: argparse.Namespace) -> service.ProduceConfig:
    """``produce``'s flags as one frozen value."""
    return service.ProduceConfig(
        kafka=options.kafka_client_config(args),
        selection=symbol_selection(args.symbols, args.quote),
        ws_url=args.ws_url,
        rest_url=args.rest_url,
        interval=args.interval,
        topic=args.topic,
        dead_letter_topic=args.dead_letter_topic,
        seed_history=args.seed_history,
        seed_files=tuple(args.seed_file),
        max_candles=args.max_candles,
        resume=args.resume,
        streams_per_connection=args.streams_per_connection,
        discovery_interval=args.discovery_interval,
        stale_intervals=args.stale_intervals,
    )


def run(args: argparse.Namespace) -> int:
    options.serve_metrics("producer", args)
    return service.run(produce_config(args))
