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
from market_anomaly.cli import settings

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
    "market_anomaly.cli.settings",   # config show
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
    add_global_arguments(parser, default_level="INFO")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for leaf in settings.subcommands(parser).values():
        add_global_arguments(leaf, default_level=argparse.SUPPRESS)  # also after the command's name
    return parser


def add_global_arguments(parser: argparse.ArgumentParser, default_level: str) -> None:
    """Flags every command takes, before or after its name (a command's copy never overrides the global value)."""
    parser.add_argument("--log-level", default=default_level, choices=LOG_LEVELS,
                        help="logging verbosity (default: INFO)")
    settings.add_config_argument(parser)


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
    try:
        parser, args, _ = settings.resolve(build_parser, sys.argv[1:] if argv is None else list(argv))
    except settings.ConfigError as error:
        print(f"market-anomaly: error: {error}", file=sys.stderr)
        return 2
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.log_level)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
