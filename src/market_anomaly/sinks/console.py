"""The live decision table on stdout: one fixed-width line per decision, anomalies highlighted.

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

from market_anomaly.sinks.common import format_utc, is_anomaly, printable, to_records

COLUMNS = (  # (title, width); the last column (reasons) is unbounded
    ("Time", 5), ("Symbol", 10), ("Close", 12), ("Return%", 7), ("Votes", 5),
    ("IS_ANOMALY", 10), ("Confidence", 10), ("Reasons", 0),
)
SEPARATOR = " | "
ANSI_ANOMALY = "\x1b[1;31m"  # bold red
ANSI_RESET = "\x1b[0m"
MODES = ("table", "anomalies", "off")


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


class ConsoleSink:
    """Prints every decision (``table``) or only anomalies (``anomalies``)."""

    name = "console"
    durable = False

    def __init__(self, mode: str = "table", stream: TextIO | None = None, header_every: int = 40,
                 catch_up_after: int = 200):
        if mode not in MODES[:2]:
            raise ValueError(f"console mode must be one of {MODES[:2]}, not {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self.header_every = header_every
        # A batch this large is history (seeding, restart catch-up): a screenful of it says nothing.
        self.catch_up_after = catch_up_after
        self.colour = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lines_since_header: int | None = None  # None: header not printed yet

    def write(self, decisions: pd.DataFrame) -> None:
        records = to_records(decisions.sort_values(["open_time", "symbol"]) if len(decisions) else decisions)
        if self.mode == "anomalies":
            records = [record for record in records if is_anomaly(record)]
        elif len(records) > self.catch_up_after:
            records = self._catch_up(records)
        for record in records:
            if self._lines_since_header is None or self._lines_since_header >= self.header_every:
                self.stream.write(header_line() + "\n")
                self._lines_since_header = 0
            line = decision_line(record)
            if self.colour and is_anomaly(record):
                line = ANSI_ANOMALY + line + ANSI_RESET
            self.stream.write(line + "\n")
            self._lines_since_header += 1
        self.stream.flush()

    def _catch_up(self, records: list[dict[str, object]]) -> list[dict[str, object]]:
        """Announce a catch-up batch; keep its anomalies and each symbol's latest candle."""
        latest = {record["symbol"]: index for index, record in enumerate(records)}
        kept = [record for index, record in enumerate(records) if is_anomaly(record) or latest[record["symbol"]] == index]
        anomalies = sum(1 for record in kept if is_anomaly(record))
        self.stream.write(
            f"  ... catching up: {len(records)} candles of {len(latest)} symbols, "
            f"{format_utc(records[0].get('open_time'), '%Y-%m-%d %H:%M')} to "
            f"{format_utc(records[-1].get('open_time'), '%H:%M')} UTC; showing its {anomalies} anomalies "
            f"and the latest candle per symbol\n")
        return kept

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
