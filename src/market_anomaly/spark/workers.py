"""Per-process caches of model parameters and detection engines; the state-bucket codec and its bounds.

Spark reuses Python worker processes across micro-batches; keeping one engine per
worker (rebuilt only when ``model_params.json`` changes) keeps the per-batch cost low
and makes a live edit of the file take effect in the next micro-batch.
"""

from __future__ import annotations

import logging
import struct
import warnings
from dataclasses import dataclass

from market_anomaly.core import DetectionEngine, ParamsWatcher
from market_anomaly.core.detectors import warmups
from market_anomaly.core.state import unpack, unpack_bucket
from market_anomaly.sinks.common import CANDLE_COLUMNS

log = logging.getLogger("market_anomaly.detect")

# PySpark concatenates the step's output frames; the rejects' all-null columns make pandas warn
# about a future dtype rule on every micro-batch, which would drown the live table.
warnings.filterwarnings("ignore", message="The behavior of DataFrame concatenation with empty or all-NA entries",
                        category=FutureWarning)

_watchers: dict[str, ParamsWatcher] = {}
_engines: dict[str, tuple[object, DetectionEngine]] = {}


def params_for(path: str):
    watcher = _watchers.get(path)
    if watcher is None:
        watcher = _watchers[path] = ParamsWatcher(path)
    return watcher.current()


def engine_for(path: str) -> DetectionEngine:
    params = params_for(path)
    cached = _engines.get(path)
    if cached is None or cached[0] is not params:
        cached = _engines[path] = (params, DetectionEngine(params))
    return cached[1]


@dataclass
class SymbolState:
    """One symbol's detection state and the ``open_time`` of its last candle (its expiry runs on market time)."""

    last_open_time: int
    blob: bytes


MAGIC = b"MAB2"
_ENTRY = struct.Struct("<IqI")  # symbol length, last open_time, state length
_LEGACY_ENTRY = struct.Struct("<HI")  # before MAGIC: symbol length, state length; last open_time in the state


def pack_states(states: dict[str, SymbolState]) -> bytes:
    """Several symbols' states as one state-store value: ``MAGIC``, then (lengths and time, symbol, state) repeated."""
    parts = [MAGIC]
    for symbol, state in states.items():
        name = symbol.encode()
        parts += [_ENTRY.pack(len(name), state.last_open_time, len(state.blob)), name, state.blob]
    return b"".join(parts)


def unpack_states(data: bytes) -> dict[str, SymbolState]:
    """The states of ``pack_states``, or of the layout before it (a checkpoint written by an older version)."""
    if not data.startswith(MAGIC):
        return _unpack_legacy(data)
    states, offset = {}, len(MAGIC)
    while offset < len(data):
        name_length, last_open_time, blob_length = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        symbol = data[offset:offset + name_length].decode()
        offset += name_length
        states[symbol] = SymbolState(last_open_time, bytes(data[offset:offset + blob_length]))
        offset += blob_length
    return states


def _unpack_legacy(data: bytes) -> dict[str, SymbolState]:
    states, offset = {}, 0
    while offset < len(data):
        name_length, blob_length = _LEGACY_ENTRY.unpack_from(data, offset)
        offset += _LEGACY_ENTRY.size
        symbol = data[offset:offset + name_length].decode()
        offset += name_length
        blob = bytes(data[offset:offset + blob_length])
        states[symbol] = SymbolState(int(unpack(blob)["engine.last"][0]), blob)
        offset += blob_length
    return states


def expire(states: dict[str, SymbolState], now: int, expiry_ms: int) -> list[str]:
    """Drop the symbols whose last candle is more than ``expiry_ms`` before ``now`` (market time); their names."""
    expired = [symbol for symbol, state in states.items() if state.last_open_time < now - expiry_ms]
    for symbol in expired:
        del states[symbol]
    return expired


def admit(states: dict[str, SymbolState], newcomers: dict[str, int], limit: int, params,
          trading: set[str]) -> tuple[set[str], list[str]]:
    """Make room for ``newcomers`` (symbol: its latest ``open_time`` in the batch, in order of arrival) in a
    bucket of at most ``limit`` symbols; returns (the refused newcomers, the evicted symbols).

    A full bucket gives up a symbol only if it has seen fewer candles than the shortest detector warm-up of
    ``params`` (none of its detectors warmed up), has no candle in this batch (``trading``) and fell silent
    before the newcomer's latest candle; the longest silent goes first. So a flood of one-off symbols cannot lock out a real listing (it evicts
    the flood's symbols from the next minute on), and never evicts a symbol that is really trading.
    """
    room = limit - len(states)
    if len(newcomers) <= room:
        return set(), []
    established = min(warmups(params).values())  # only here: it builds the detectors, and most calls have room
    names = [symbol for symbol in states if symbol not in trading]
    seen = unpack_bucket([states[symbol].blob for symbol in names]).rows("engine.last", [-1, 0, 0, 0])[:, 3]
    silent = sorted((states[symbol].last_open_time, symbol) for symbol, count in zip(names, seen)
                    if count < established)
    refused, evicted = set(), []
    for symbol, latest in newcomers.items():
        if room > 0:
            room -= 1
        elif len(evicted) < len(silent) and silent[len(evicted)][0] < latest:
            evicted.append(silent[len(evicted)][1])
        else:
            refused.add(symbol)
    for symbol in evicted:
        del states[symbol]
    return refused, evicted


@dataclass(frozen=True)
class StateBounds:
    """How much detector state a runner keeps: symbols expire after ``expiry_ms`` of market time without a
    candle (replays and restarts expire the same symbols), and each state bucket (a Spark state group, a
    decider's Kafka partition) holds at most ``symbols_per_bucket``."""

    expiry_ms: int = 24 * 3_600_000
    symbols_per_bucket: int = 625  # 10,000 symbols over 16 buckets

    @classmethod
    def spread(cls, expiry_seconds: float, max_symbols: int, buckets: int) -> "StateBounds":
        """``--max-symbols`` spread over ``buckets``, rounded down, so the buckets together never hold more
        (200 over 16: 12 each, 192)."""
        return cls(int(expiry_seconds * 1000), max_symbols // buckets)


def decide_bucket(candles, states: dict[str, SymbolState], params_path: str, bounds: StateBounds,
                  bucket: tuple[str, object]):
    """One bucket's valid ``candles`` (a frame of the parser's candle columns) decided against its ``states``,
    which are updated in place; returns (the decisions, with the candle columns the dashboard draws; the
    candles of refused newcomers with their ``error`` and ``raw``, or None).

    Bounded (``StateBounds``): a symbol without a candle for ``expiry_ms`` of market time is forgotten, and a
    bucket takes at most ``symbols_per_bucket``: a newcomer to a full bucket replaces a symbol that never warmed
    up and fell silent before it (``admit``), or else its candles are rejected. ``bucket`` is (what a bucket is,
    which one), e.g. ("state bucket", 3), for the log and the reason.
    """
    latest = candles.groupby("symbol", sort=False)["open_time"].max()
    expire(states, max(int(latest.max()), max((s.last_open_time for s in states.values()), default=0)),
           bounds.expiry_ms)
    newcomers = {symbol: int(open_time) for symbol, open_time in latest.items() if symbol not in states}
    engine = engine_for(params_path)
    refused, evicted = admit(states, newcomers, bounds.symbols_per_bucket, engine.params, set(latest.index))
    if evicted:
        log.warning("%s %s full: forgot %d symbols that never warmed up (%s) for new ones",
                    *bucket, len(evicted), ", ".join(evicted[:5]))
    accepted = candles[~candles["symbol"].isin(refused)].reset_index(drop=True) if refused else candles
    decided = engine.decide_bucket(accepted, {symbol: state.blob for symbol, state in states.items()})
    for symbol, blob in decided.states.items():
        previous = states.get(symbol)
        states[symbol] = SymbolState(max(int(latest[symbol]), previous.last_open_time if previous else 0), blob)
    for name in CANDLE_COLUMNS:  # the dashboard draws candlesticks
        decided.columns[name] = accepted[name].to_numpy(float)[decided.rows]
    if not refused:
        return decided.frame(CANDLE_COLUMNS), None
    over = candles[candles["symbol"].isin(refused)]
    return decided.frame(CANDLE_COLUMNS), over.assign(
        error=f"symbol limit reached ({bounds.symbols_per_bucket} per {bucket[0]})",
        raw=over.to_json(orient="records", lines=True).splitlines())
