"""`market-anomaly dashboard`: the local web page and JSON API over the sinks' database."""

from __future__ import annotations

import argparse
import logging

from market_anomaly import config
from market_anomaly.cli import options

log = logging.getLogger("market_anomaly.dashboard")


def register(subparsers: argparse._SubParsersAction) -> None:
    from market_anomaly.sinks.database import default_url

    parser = subparsers.add_parser(
        "dashboard", help="local web page: live candles with anomalies, anomaly table, pipeline health",
        description="Serve the dashboard and its JSON API (/api/anomalies, /api/candles, /api/symbols, "
                    "/api/health) from the database the detect job writes; Kafka is asked for message "
                    "counts and consumer lag.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; the default keeps it on this machine (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8050, help="port (default: %(default)s)")
    parser.add_argument("--db", default=config.env("DB", default_url()), metavar="URL",
                        help="the detect job's database (env MARKET_ANOMALY_DB; default: %(default)s)")
    parser.add_argument("--topic", default=config.env("CANDLES_TOPIC", config.CANDLES_TOPIC),
                        help="the candle topic the detect job reads; lag is measured on it (default: %(default)s)")
    parser.add_argument("--no-kafka", action="store_true", help="do not ask Kafka for counts and lag")
    options.add_kafka_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from market_anomaly.dashboard.server import create_app
    from market_anomaly.config import redact
    from market_anomaly.sinks.database import DatabaseError, open_database

    try:
        database = open_database(args.db)
    except DatabaseError as error:
        log.error("%s", error)
        return 1
    kafka_config = None if args.no_kafka else options.kafka_client_config(args)
    log.info("dashboard: http://%s:%d (database %s)", args.host, args.port, redact(args.db))
    try:
        web.run_app(create_app(database, kafka_config, args.topic), host=args.host, port=args.port, print=None,
                    access_log=None)
    finally:
        database.close()
    return 0
