"""One table of candle checks, applied at every edge: the producer, the stream's parser, the file readers.

Each rule says where a candle is *invalid* and why, written once over named columns and
evaluated by three backends: plain Python values (one candle, in the producer), NumPy arrays
(a frame's columns: files, and topics read by the decider) and Spark columns (the stream and ``train --spark``, in the
JVM before anything reaches Python). A candle's reason is its first failing rule's, the same
text everywhere, and it goes to the dead-letter topic (or the reader's warning) with the raw value.

The checks: required fields present; the symbol, upper-cased, 1-20 letters or digits (and in
the configured list, when there is one); the configured interval; every number finite and
within plausible bounds (no price or tick size below 1e-12 or above 1e12, no amount above 1e18: beyond
those, features overflow to infinity); OHLC consistency; ``open_time`` not before 2009, aligned
to the interval and not more than one interval after the present (historical replays pass, a
candle from the future does not: it would freeze its symbol, whose later candles are not after
it); ``close_time`` after ``open_time``. Raw values larger than ``MAX_RAW_BYTES`` or not UTF-8 are
rejected before they are parsed.

>>> reason({"symbol": "BTCUSDT", "open_time": 1_769_285_820_000, "open": 1.0, "high": 1.2, "low": 0.9,
...         "close": 1.1, "volume": 5.0}, Limits(interval="1m"))
>>> reason({"symbol": "BTC-USD", "open_time": 1_769_285_820_000, "open": 1.0, "high": 1.2, "low": 0.9,
...         "close": 1.1, "volume": 5.0}, Limits(interval="1m"))
'symbol is not 1-20 letters or digits'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

MAX_SYMBOL_LENGTH = 20
SYMBOL_PATTERN = f"^[A-Z0-9]{{1,{MAX_SYMBOL_LENGTH}}}$"
MAX_RAW_BYTES = 4096  # a candle message is ~400 bytes; a larger value is not one (and is not parsed)
# How much of a rejected value is kept with its reason; JSON escaping at most sextuples it: ~100 KB, far below
# any broker's limit.
RAW_BYTES = 16_384
PRICE_BOUNDS = (1e-12, 1e12)
MAX_AMOUNT = 1e18
EARLIEST_OPEN_TIME = 1_230_768_000_000  # 2009-01-01 UTC: before any crypto market

PRICES = ("open", "high", "low", "close")
AMOUNTS = ("volume", "quote_volume", "taker_buy_base", "taker_buy_quote", "trades")
REQUIRED = ("symbol", "open_time", *PRICES, "volume")
# Optional fields every backend fills with missing when a candle lacks them; ``tick_size`` is the symbol's price
# step from the exchange's PRICE_FILTER (the producer adds it when exchangeInfo gives one).
OPTIONAL = ("interval", "close_time", "tick_size", *AMOUNTS)

_DAY_MS = 86_400_000
# "M" is a calendar month; its nominal length is 30 days (the exchange's close times are exact).
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": _DAY_MS, "w": 7 * _DAY_MS, "M": 30 * _DAY_MS}
# Every kline interval Binance offers, the one table of them.
INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
# Where open times fall, as (modulus, offset) of epoch ms, where it is not simply a multiple of the length:
# weeks open on Mondays (the epoch was a Thursday), months at midnight on the 1st (checked to the day).
_ALIGNMENT = {"1w": (7 * _DAY_MS, 4 * _DAY_MS), "1M": (_DAY_MS, 0)}


def interval_ms(interval: str) -> int:
    """Length of a kline interval in milliseconds (1M: nominally 30 days); ValueError for an unknown interval.

    >>> interval_ms("1w"), interval_ms("1M") // 86_400_000
    (604800000, 30)
    """
    if interval not in INTERVALS:
        raise ValueError(f"unsupported interval {interval!r}; choose one of {', '.join(INTERVALS)}")
    return int(interval[:-1]) * _UNIT_MS[interval[-1]]


def interval_alignment(interval: str) -> tuple[int, int]:
    """(modulus, offset): an ``interval`` candle's open time ``t`` has ``(t - offset) % modulus == 0``.

    >>> interval_alignment("1h"), interval_alignment("1w")
    ((3600000, 0), (604800000, 345600000))
    """
    return _ALIGNMENT.get(interval, (interval_ms(interval), 0))


def interval_name(milliseconds: int) -> str:
    """The interval ``milliseconds`` long (``60000`` -> ``1m``); ValueError when no kline interval is."""
    for name in INTERVALS:
        if interval_ms(name) == milliseconds:
            return name
    raise ValueError(f"no kline interval is {milliseconds} ms long; choose one of {', '.join(INTERVALS)}")


@dataclass(frozen=True)
class Limits:
    """What the checks are against; each edge builds one.

    ``interval`` None skips the interval and alignment checks (a file without an interval column);
    ``present_ms`` is the present in epoch ms (an int, or a Spark column) or None to accept candles
    from the future (a simulated market running faster than the clock); ``symbols`` an allow-list.
    """

    interval: str | None = "1m"
    present_ms: Any = None
    symbols: frozenset[str] | None = None

    @property
    def step(self) -> int | None:
        return None if self.interval is None else interval_ms(self.interval)


# A rule: (reason, invalid(columns, backend, limits)), or None where it does not apply to these limits.
Rule = tuple[str, Callable[[Mapping[str, Any], Any, Limits], Any]]


def rules(limits: Limits) -> list[Rule]:
    """The table, in the order reasons are reported."""
    step = limits.step
    table: list[Rule] = [("missing symbol", lambda c, b, _: b.blank(c["symbol"]))]
    table += [(f"missing {name}", lambda c, b, _, name=name: b.absent(c[name])) for name in REQUIRED[1:]]
    table += [
        (f"symbol longer than {MAX_SYMBOL_LENGTH} characters", lambda c, b, _: b.length(c["symbol"]) > MAX_SYMBOL_LENGTH),
        ("symbol is not 1-20 letters or digits", lambda c, b, _: b.negate(b.matches(c["symbol"], SYMBOL_PATTERN))),
    ]
    if limits.symbols is not None:
        table.append(("symbol not in the configured list",
                      lambda c, b, lim: b.negate(b.isin(c["symbol"], lim.symbols))))
    if limits.interval is not None:
        table.append((f"interval is not {limits.interval}",
                      lambda c, b, lim: b.present(c["interval"]) & (c["interval"] != lim.interval)))
    table += [(f"{name} is not finite", lambda c, b, _, name=name: b.present(c[name]) & b.negate(b.isfinite(c[name])))
              for name in (*PRICES, *AMOUNTS, "tick_size")]
    low, high = PRICE_BOUNDS
    table += [(f"{name} price outside [{low:g}, {high:g}]", lambda c, b, _, name=name: (c[name] < low) | (c[name] > high))
              for name in PRICES]
    table.append((f"tick_size outside [{low:g}, {high:g}]",
                  lambda c, b, _: (c["tick_size"] < low) | (c["tick_size"] > high)))
    table += [(f"{name} outside [0, {MAX_AMOUNT:g}]", lambda c, b, _, name=name: (c[name] < 0) | (c[name] > MAX_AMOUNT))
              for name in AMOUNTS]
    table += [
        ("high below open, close or low", lambda c, b, _: c["high"] < b.greatest(c["open"], c["close"], c["low"])),
        ("low above open or close", lambda c, b, _: c["low"] > b.least(c["open"], c["close"])),
        ("open_time before 2009", lambda c, b, _: c["open_time"] < EARLIEST_OPEN_TIME),
    ]
    if step is not None:
        modulus, offset = interval_alignment(limits.interval)
        table.append((f"open_time not aligned to {limits.interval}",
                      lambda c, b, _: ((c["open_time"] - offset) % modulus) != 0))
    if limits.present_ms is not None:
        lead = step or 0
        table.append((f"open_time more than {limits.interval or 'a moment'} after the present",
                      lambda c, b, lim: c["open_time"] > lim.present_ms + lead))
    table.append(("close_time not after open_time",
                  lambda c, b, _: b.present(c["close_time"]) & (c["close_time"] <= c["open_time"])))
    return table


# -- backends -------------------------------------------------------------------------------------


class Scalar:
    """One candle's plain Python values; a missing number is NaN (comparisons with it are false)."""

    blank = staticmethod(lambda x: not isinstance(x, str) or not x.strip())
    absent = staticmethod(lambda x: x is None or (isinstance(x, float) and math.isnan(x)))
    present = staticmethod(lambda x: not Scalar.absent(x))
    isfinite = staticmethod(lambda x: math.isfinite(x))
    negate = staticmethod(lambda x: not x)
    length = staticmethod(len)
    matches = staticmethod(lambda x, pattern: re.fullmatch(pattern, x) is not None)
    isin = staticmethod(lambda x, values: x in values)
    greatest = staticmethod(max)
    least = staticmethod(min)


def reason(candle: Mapping[str, Any], limits: Limits) -> str | None:
    """Why ``candle`` (field -> value; the symbol already upper-cased) is invalid, or None when it is valid."""
    values = {name: candle.get(name) for name in OPTIONAL} | dict(candle)
    values = {name: math.nan if value is None and name not in ("symbol", "interval") else value
              for name, value in values.items()}
    for text, invalid in rules(limits):
        if invalid(values, Scalar, limits):  # in order: a later rule may assume an earlier one passed
            return text
    return None


class Arrays:
    """NumPy arrays of a frame's columns (NaN or None is missing), each check one vectorised call. The string
    checks run once per distinct value: a symbol column repeats a few names (per row they were a quarter of
    ``score``'s time)."""

    @staticmethod
    def blank(x):
        return _per_distinct(x, lambda u: u.astype(str).str.strip() == "", missing=True)

    @staticmethod
    def absent(x):
        import pandas as pd

        return pd.isna(x)

    @staticmethod
    def present(x):
        import pandas as pd

        return pd.notna(x)

    @staticmethod
    def isfinite(x):
        import numpy as np

        return np.abs(x) < math.inf

    @staticmethod
    def negate(x):
        import numpy as np

        return np.logical_not(x)

    @staticmethod
    def length(x):
        return _per_distinct(x, lambda u: u.str.len(), missing=math.nan)

    @staticmethod
    def matches(x, pattern):
        return _per_distinct(x, lambda u: u.str.fullmatch(pattern, na=False).astype(bool), missing=False)

    @staticmethod
    def isin(x, values):
        return _per_distinct(x, lambda u: u.isin(list(values)), missing=False)

    @staticmethod
    def greatest(*xs):
        import numpy as np

        return np.fmax.reduce(xs)  # fmax skips a NaN, as a frame's max does

    @staticmethod
    def least(*xs):
        import numpy as np

        return np.fmin.reduce(xs)


def _per_distinct(column, check, missing):
    """``check`` (a Series -> Series) applied to each distinct value of ``column`` once, spread back to its rows
    as an array; missing values get ``missing``."""
    import numpy as np
    import pandas as pd

    codes, distinct = pd.factorize(column)
    values = np.append(check(pd.Series(distinct, dtype=object)).to_numpy(), missing)
    return values[codes]  # code -1 (missing) takes the appended value


def upper_symbols(column):
    """A symbol column upper-cased as an object array, each distinct symbol once; a missing one stays None."""
    import numpy as np
    import pandas as pd

    codes, symbols = pd.factorize(column)
    names = np.array([str(symbol).upper() for symbol in symbols] + [None], dtype=object)
    return names[codes]


TEXT_FIELDS = ("symbol", "interval")


def frame_reasons(frame, limits: Limits):
    """Each row's reason (None when valid) as a pandas Series; ``frame`` has the ``REQUIRED`` columns,
    numbers numeric and the symbol upper-cased; absent optional columns are not checked."""
    import numpy as np
    import pandas as pd

    rows = len(frame)
    columns = {name: (np.full(rows, math.nan) if name not in frame.columns
                      else frame[name].to_numpy(object) if name in TEXT_FIELDS
                      else frame[name].to_numpy(float, na_value=math.nan))
               for name in (*OPTIONAL, *REQUIRED)}
    if isinstance(limits.present_ms, pd.Series):  # a present per row, as the frame's rows
        limits = replace(limits, present_ms=limits.present_ms.to_numpy(float))
    reasons = np.full(rows, None, dtype=object)
    for text, invalid in reversed(rules(limits)):  # the first failing rule's reason is the last written
        with np.errstate(invalid="ignore"):
            failing = np.asarray(invalid(columns, Arrays, limits), dtype=bool)
        if failing.any():
            reasons[failing] = text
    return pd.Series(reasons, index=frame.index, dtype=object)


class Spark:
    """Spark SQL columns (null is missing): the checks run in the JVM."""

    @staticmethod
    def blank(x):
        from pyspark.sql import functions as F

        return x.isNull() | (F.trim(x) == "")

    absent = staticmethod(lambda x: x.isNull())
    present = staticmethod(lambda x: x.isNotNull())

    @staticmethod
    def isfinite(x):
        from pyspark.sql import functions as F

        return F.abs(x) < F.lit(math.inf)  # false for NaN: Spark sorts NaN above infinity

    negate = staticmethod(lambda x: ~x)

    @staticmethod
    def length(x):
        from pyspark.sql import functions as F

        return F.length(x)

    matches = staticmethod(lambda x, pattern: x.rlike(pattern))
    isin = staticmethod(lambda x, values: x.isin(sorted(values)))

    @staticmethod
    def greatest(*xs):
        from pyspark.sql import functions as F

        return F.greatest(*xs)

    @staticmethod
    def least(*xs):
        from pyspark.sql import functions as F

        return F.least(*xs)


def spark_reason(columns: Mapping[str, Any], limits: Limits):
    """The first failing rule's reason as one Spark column (null when valid); ``columns`` maps every
    field of ``rules`` to a Spark column (a null literal for one the source lacks)."""
    from pyspark.sql import functions as F

    reason_column = None
    for text, invalid in rules(limits):
        condition = F.coalesce(invalid(columns, Spark, limits), F.lit(False))
        reason_column = (F.when(condition, F.lit(text)) if reason_column is None
                         else reason_column.when(condition, F.lit(text)))
    return reason_column


# Checks on a Kafka record's raw bytes before it is parsed, in this order, in Python and in the JVM; then
# what a value that is no candle object gets.
EMPTY_VALUE = "empty value"
OVERSIZED_VALUE = f"value larger than {MAX_RAW_BYTES} bytes"
NOT_UTF8 = "value is not valid UTF-8"
NOT_AN_OBJECT = "not a JSON object"  # not even starting with "{"
NOT_A_CANDLE = "not a candle JSON object"  # no JSON object, or none of the required fields


def raw_reason(value: bytes | None) -> str | None:
    """A record's raw bytes checked before parsing: its presence, its size and its encoding (None: fine)."""
    if value is None:
        return EMPTY_VALUE
    if len(value) > MAX_RAW_BYTES:
        return OVERSIZED_VALUE
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8
    return None


def raw_reason_spark(value):
    """``raw_reason`` as a Spark column, so the checks run in the JVM."""
    from pyspark.sql import functions as F

    return (F.when(value.isNull(), F.lit(EMPTY_VALUE))
            .when(F.length(value) > MAX_RAW_BYTES, F.lit(OVERSIZED_VALUE))
            .when(~F.is_valid_utf8(value), F.lit(NOT_UTF8)))


def utf8_prefix(text: str | bytes | None, max_bytes: int) -> str:
    """``text`` (invalid UTF-8 replaced) cut to at most ``max_bytes`` UTF-8 bytes, never inside a character.

    >>> utf8_prefix("σσσ", 5)
    'σσ'
    >>> utf8_prefix(b"ab\\xff", 10)
    'ab\ufffd'
    """
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text[:max_bytes * 4].decode("utf-8", errors="replace")
    encoded = text[:max_bytes].encode("utf-8", errors="replace")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore")
