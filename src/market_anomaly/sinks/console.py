"""The live decision table on stdout: one fixed-width line per decision, anomalies highlighted.

Modes (``--console``): ``all`` prints every decision; ``anomalies`` only anomalies; ``summary``
one line per micro-batch (``summary_line``: candles, symbols, anomalies by confidence, its market
time and when it was decided); ``auto`` (the default) is ``all`` for a batch of a few symbols
(``AUTO_ALL_SYMBOLS``, at most ``AUTO_ALL_CANDLES`` candles: a live batch of a small watch list)
and otherwise the batch's anomalies and its summary, so 2,000 symbols make a line per anomaly and
one per minute, and a catch-up batch (seeding, a restart) does not scroll history past.

Text from the data (symbol, confidence, reasons) is printed without its control characters
(``printable``), so a hostile symbol cannot recolour or clear the terminal. Colour only when
the stream is a terminal; in a log file anomalies carry a ``!`` marker
instead, so ``grep '^!'`` finds them. The header repeats every ``header_every`` lines so
a scrolled terminal still says what the columns are.
"""

from __future__ import annotations

import sys
from typing import TextIO

import pandas as pd

from market_anomaly.sinks.common import CONFIDENCE_LEVELS, format_utc, is_anomaly, printable, to_records

COLUMNS = (  # (title, width); the last column (reasons) is unbounded
    ("Time", 5), ("Symbol", 10), ("Close", 12), ("Return%", 7), ("Votes", 5),
    ("IS_ANOMALY", 10), ("Confidence", 10), ("Reasons", 0),
)
SEPARATOR = " | "
ANSI_ANOMALY = "\x1b[1;31m"  # bold red
ANSI_RESET = "\x1b[0m"
MODES = ("auto", "all", "anomalies", "summary", "off")
AUTO_ALL_SYMBOLS = 50
AUTO_ALL_CANDLES = 200


def format_price(value: object) -> str:
    """Enough decimals to see a move: 91,702.10 / 3.1416 / 0.081234."""
    if value is None:
        return "-"
    price = float(value)
    decimals = 2 if abs(price) >= 100 else 4 if abs(price) >= 1 else 6
    return f"{price:,.{decimals}f}"


def format_return(value: object) -> str:
    return "-" if value is None else f"{float(value):+.2f}"


def format_votes(value: object) -> str:
    return "-" if value is None else str(int(value))


def header_line() -> str:
    return "  " + SEPARATOR.join(title.ljust(width) if width else title for title, width in COLUMNS)


def decision_line(record: dict[str, object]) -> str:
    """One decision as a fixed-width row (without colour), marker ``!`` first for an anomaly."""
    anomaly = is_anomaly(record)
    cells = (
        format_utc(record.get("open_time"), "%H:%M").ljust(5),
        printable(record.get("symbol") or "").ljust(10),
        format_price(record.get("close")).rjust(12),
        format_return(record.get("return_pct")).rjust(7),
        format_votes(record.get("votes")).center(5),
        ("YES" if anomaly else "no").ljust(10),
        printable(record.get("confidence") or "").ljust(10),
        printable(record.get("reasons") or ""),
    )
    return ("! " if anomaly else "  ") + SEPARATOR.join(cells).rstrip()


def summary_line(records: list[dict[str, object]]) -> str:
    """One line for a batch, ``# `` first (``grep '^#'``), e.g. ``# 2026-01-24 20:17 UTC: 2,000 candles of 2,000
    symbols, 3 anomalies (HIGH 1, MEDIUM 2); decided 20:18:02 UTC``."""
    times = [record["open_time"] for record in records if record.get("open_time") is not None]
    first, last = (min(times), max(times)) if times else (None, None)
    span = format_utc(first)
    if last != first:
        same_day = format_utc(first, "%Y-%m-%d") == format_utc(last, "%Y-%m-%d")
        span += " to " + format_utc(last, "%H:%M" if same_day else "%Y-%m-%d %H:%M")
    symbols = len({record.get("symbol") for record in records})
    levels = [printable(record.get("confidence") or "NONE").upper() for record in records if is_anomaly(record)]
    by_level = ", ".join(f"{level} {levels.count(level)}" for level in reversed(CONFIDENCE_LEVELS)
                         if levels.count(level))
    decided = [record["decided_at"] for record in records if record.get("decided_at") is not None]
    return (f"# {span} UTC: {len(records):,} candle{'s' * (len(records) != 1)} of {symbols:,} "
            f"symbol{'s' * (symbols != 1)}, {len(levels):,} anomal{'ies' if len(levels) != 1 else 'y'}"
            + (f" ({by_level})" if by_level else "")
            + (f"; decided {format_utc(max(decided), '%H:%M:%S')} UTC" if decided else ""))


class ConsoleSink:
    """Prints a micro-batch's decisions as ``mode`` says (module docstring)."""

    name = "console"
    durable = False

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, header_every: int = 40,
                 auto_all_symbols: int = AUTO_ALL_SYMBOLS, auto_all_candles: int = AUTO_ALL_CANDLES):
        if mode not in MODES[:-1]:
            raise ValueError(f"console mode must be one of {MODES[:-1]}, not {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self.header_every = header_every
        self.auto_all_symbols = auto_all_symbols
        self.auto_all_candles = auto_all_candles
        self.colour = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lines_since_header: int | None = None  # None: header not printed yet

    def write(self, decisions: pd.DataFrame) -> None:
        if not len(decisions):
            return
        records = to_records(decisions.sort_values(["open_time", "symbol"]))
        every = self._every_decision(records)
        shown = records if every else [] if self.mode == "summary" else [r for r in records if is_anomaly(r)]
        for record in shown:
            if self._lines_since_header is None or self._lines_since_header >= self.header_every:
                self.stream.write(header_line() + "\n")
                self._lines_since_header = 0
            line = decision_line(record)
            if self.colour and is_anomaly(record):
                line = ANSI_ANOMALY + line + ANSI_RESET
            self.stream.write(line + "\n")
            self._lines_since_header += 1
        if self.mode == "summary" or (self.mode == "auto" and not every):
            self.stream.write(summary_line(records) + "\n")
        self.stream.flush()

    def _every_decision(self, records: list[dict[str, object]]) -> bool:
        if self.mode != "auto":
            return self.mode == "all"
        return (len(records) <= self.auto_all_candles
                and len({record.get("symbol") for record in records}) <= self.auto_all_symbols)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
