"""The `market-anomaly` command line: one entry point, one subcommand per part.

Each command module here registers its subcommands through a ``register(subparsers)``
function, turns the flags into the frozen configuration values of the part it drives
(``DetectConfig``, ``ProduceConfig``, ...) and calls it: the parts below never see argparse.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from market_anomaly import __version__

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "market_anomaly.cli.up",         # up, setup
    "market_anomaly.cli.kafka",      # kafka start|stop|status|topics
    "market_anomaly.cli.exchange",   # exchange
    "market_anomaly.cli.produce",    # produce
    "market_anomaly.cli.detect",     # detect
    "market_anomaly.cli.train",      # train
    "market_anomaly.cli.score",      # score
    "market_anomaly.cli.evaluate",   # evaluate
    "market_anomaly.cli.dashboard",  # dashboard
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="market-anomaly",
        description=(
            "Watch exchange candles live and say which symbol is behaving abnormally, "
            "how sure we are, and why. Binance WebSocket -> Kafka -> Spark Structured Streaming."
        ),
        epilog="Run `market-anomaly COMMAND --help` for the manual of one command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: %(default)s)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # py4j logs every gateway call at INFO; Spark's own logs are set through its log level.
    logging.getLogger("py4j").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.log_level)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
