"""The `market-anomaly` command line: one entry point, one subcommand per part.

Each command module here registers its subcommands through a ``register(subparsers)``
function, turns the flags into the frozen configuration values of the part it drives
(``DetectConfig``, ``ProduceConfig``, ...) and calls it: the parts below never see argparse.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import sys

from market_anomaly import __version__, config
from market_anomaly.cli import settings

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "market_anomaly.cli.up",         # up, setup
    "market_anomaly.cli.kafka",      # kafka start|stop|status|topics
    "market_anomaly.cli.spark",      # spark start|stop|status
    "market_anomaly.cli.exchange",   # exchange
    "market_anomaly.cli.produce",    # produce
    "market_anomaly.cli.detect",     # detect
    "market_anomaly.cli.decide",     # decide
    "market_anomaly.cli.train",      # train
    "market_anomaly.cli.score",      # score
    "market_anomaly.cli.evaluate",   # evaluate
    "market_anomaly.cli.dashboard",  # dashboard
    "market_anomaly.cli.settings",   # config show
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "LOG_FORMAT"  # MARKET_ANOMALY_LOG_FORMAT: children of `up` inherit the choice


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
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        default=argparse.SUPPRESS if default_level is argparse.SUPPRESS else None,
                        help="text lines, or one JSON event per line for log shippers (env "
                             "MARKET_ANOMALY_LOG_FORMAT; default: text); `up` passes it to the processes it starts")
    settings.add_config_argument(parser)


class RedactingFormatter(logging.Formatter):
    """The text log line with secrets hidden (``config.redact``): a token in an error message never reaches a log."""

    def format(self, record: logging.LogRecord) -> str:
        return config.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers: time (UTC, ISO 8601), level, logger, message, and the
    exception when there is one; secrets hidden as in the text format."""

    def format(self, record: logging.LogRecord) -> str:
        event = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": config.redact(record.getMessage()),
                 "process": record.process}
        if record.exc_info:
            event["exception"] = config.redact(self.formatException(record.exc_info))
        return json.dumps(event, ensure_ascii=False)


def configure_logging(level: str, log_format: str | None = None) -> None:
    """Logging to stderr, as text or JSON lines (``log_format``, default ``MARKET_ANOMALY_LOG_FORMAT`` or text)."""
    log_format = log_format or config.env(LOG_FORMAT_ENV, "text")
    if log_format not in LOG_FORMATS:
        raise SystemExit(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    os.environ[config.ENV_PREFIX + LOG_FORMAT_ENV] = log_format  # the processes `up` starts log alike
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op where logging is set up already (pytest)
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
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
