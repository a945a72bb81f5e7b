"""The detection engine: candles + state in, decisions + state out, for one symbol or many at once.

The same code serves the Spark stream (one call per state bucket and micro-batch) and offline
scoring (one call per symbol and file). Decisions do not depend on how a series is cut
into calls nor on which symbols share a call: every feature and baseline is a function of
the symbol's stream positions (see ``features``), and the state carries exactly the tails
those need. One call is one vectorised pass over all its symbols' candles: the shared
``baselines``, then every registered detector (``detectors.DETECTORS``), then ``consensus``.

Input handling: candles are sorted by ``open_time``; of several candles with the same
``open_time`` the first wins; candles not after the last processed one are dropped (a
Kafka replay or a REST backfill of known minutes changes nothing).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np
import pandas as pd

from market_anomaly.core.baselines import Baselines
from market_anomaly.core.calibration import OWN_LEVELS, own_surprise, surprise
from market_anomaly.core.consensus import consensus, group_surprise
from market_anomaly.core.detectors import DETECTORS, build
from market_anomaly.core.features import Segments, candle_features
from market_anomaly.core.params import ModelParams
from market_anomaly.core.state import pack, pack_bucket, unpack_bucket

# The candle and its features (scores' baselines included), then each detector's score, then the decision.
_FEATURE_COLUMNS: list[tuple[str, str]] = [
    ("symbol", "object"), ("interval", "object"), ("open_time", "int64"), ("close_time", "int64"),
    ("close", "float64"), ("return_pct", "float64"), ("log_return", "float64"), ("range_pct", "float64"),
    ("volume", "float64"), ("volume_change", "float64"), ("volume_ratio", "float64"), ("range_ratio", "float64"),
    ("taker_buy_share", "float64"), ("window_mean", "float64"), ("window_std", "float64"),
]
DECISION_SCHEMA: list[tuple[str, str]] = [
    *_FEATURE_COLUMNS,
    *[(detector.column, "float64") for detector in DETECTORS if detector.column not in dict(_FEATURE_COLUMNS)],
    ("surprise", "float64"), ("still_share", "float64"),
    ("votes", "int64"), ("is_anomaly", "bool"), ("confidence", "object"), ("reasons", "object"),
    ("market_event", "bool"), ("produced_at", "int64"),
]

# Columns beyond the decision record: volume_change (vs the previous minute), volume_ratio and range_ratio
# (vs their rolling medians), taker_buy_share (NaN when absent), window_mean/window_std (return %, last 60
# candles), each detector's score (its ``column``: see its class), surprise (the fused calibrated surprise,
# -log10 tail probability; see calibration), still_share (the share of the symbol's closes so far that did not
# move: at ``consensus.thin_still_share`` it is judged as a thin market), market_event (set by mark_market_events).
# Floats are NaN while a detector's baseline is warming up.

INTERVAL_NAMES = {60_000: "1m", 180_000: "3m", 300_000: "5m", 900_000: "15m", 1_800_000: "30m",
                  3_600_000: "1h", 14_400_000: "4h", 86_400_000: "1d"}


def typed_frame(columns: dict[str, object], length: int, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """``DECISION_SCHEMA``'s columns in order, then the ``extra`` float columns, each built with its dtype
    (scalars broadcast).

    Typing each array up front instead of ``DataFrame.astype`` keeps a one-candle call (the
    stream's usual micro-batch per symbol) at a fraction of a millisecond of pandas overhead.
    """
    typed = {}
    for name, dtype in _schema(extra):
        values = np.asarray(columns[name])
        if values.ndim == 0:
            values = np.full(length, values.item(), dtype=object if dtype == "object" else dtype)
        typed[name] = values.astype(dtype, copy=False)
    return pd.DataFrame(typed, copy=False)


def _schema(extra: tuple[str, ...]) -> list[tuple[str, str]]:
    return DECISION_SCHEMA + [(name, "float64") for name in extra]


def empty_decisions(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return typed_frame({name: np.empty(0, dtype) for name, dtype in _schema(extra)}, 0, extra)


def new_rows(symbols: np.ndarray, open_time: np.ndarray, after_open_time: np.ndarray) -> np.ndarray:
    """Which candles to decide, in order: grouped by symbol (``symbols``: each candle's index in the call), each
    symbol's by ``open_time``, the first of each ``open_time``, only after the symbol's ``after_open_time``.

    >>> new_rows(np.array([1, 0, 0, 1, 0]), np.array([5, 7, 6, 5, 6]), np.array([5, 0])).tolist()
    [2, 1, 0]
    """
    later = (symbols[1:] > symbols[:-1]) | ((symbols[1:] == symbols[:-1]) & (open_time[1:] > open_time[:-1]))
    if later.all():  # the usual case: already in order, no duplicates
        return np.flatnonzero(open_time > after_open_time[symbols])
    order = np.lexsort((open_time, symbols))  # stable: of equal open times the first keeps its place
    ordered_symbols, ordered_times = symbols[order], open_time[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (ordered_symbols[1:] != ordered_symbols[:-1]) | (ordered_times[1:] != ordered_times[:-1])
    return order[first & (ordered_times > after_open_time[ordered_symbols])]


class Decided(NamedTuple):
    """One call's decisions.

    ``columns``: by ``DECISION_SCHEMA`` name, one array entry per decision, grouped by symbol
    (in order of first appearance in the call's candles), each symbol's by ``open_time``.
    ``rows``: the candle each decision is about, as a position in the call's candles (to carry
    other candle columns along: ``candles[name].to_numpy()[rows]``). ``states``: the new state of
    every symbol that had new candles (the others' states are unchanged).
    """

    columns: dict[str, np.ndarray]
    rows: np.ndarray
    states: dict[str, bytes]

    def frame(self, extra: tuple[str, ...] = ()) -> pd.DataFrame:
        """The decisions as a typed frame (``DECISION_SCHEMA``, then the ``extra`` float columns the caller added
        to ``columns``)."""
        return typed_frame(self.columns, len(self.rows), extra) if len(self.rows) else empty_decisions(extra)


class DetectionEngine:
    """Stateless apart from its parameters: the per-symbol states travel in and out of each call."""

    def __init__(self, params: ModelParams):
        self.params = params
        self.keep_group_surprise, self.group_surprise = False, None
        self.interval_name = INTERVAL_NAMES.get(params.interval_ms, f"{params.interval_ms}ms")

    def process(self, symbol: str, candles: pd.DataFrame, state: bytes | None) -> tuple[pd.DataFrame, bytes]:
        """One symbol's decisions (``DECISION_SCHEMA``, one row per new candle, by ``open_time``) and new state
        (offline scoring: a whole series in one call)."""
        columns, rows, (new_state,) = self._decide(candles, np.zeros(len(candles), dtype=np.int64), [symbol], [state])
        decisions = typed_frame(columns, len(rows)) if len(rows) else empty_decisions()
        return decisions, new_state if new_state is not None else state if state else pack({})

    def decide_bucket(self, candles: pd.DataFrame, states: Mapping[str, bytes]) -> Decided:
        """Decide a state bucket in one vectorised pass: many symbols, each with a few new candles.

        ``candles``: the candle columns (``open_time``, ``open``, ``high``, ``low``, ``close``,
        ``volume``; optionally ``interval``, ``close_time``, ``taker_buy_base``, ``trades``, ``produced_at``) and
        ``symbol``, rows in any order (duplicates, replays and disorder handled per symbol as in
        ``process``). ``states``: the symbols' states from earlier calls (a symbol without one
        starts fresh; entries for symbols without candles are not read). The decisions equal
        one ``process`` call per symbol, whatever the mix of symbols; the cost of a call grows
        with its candles, barely with its symbols (a per-symbol state codec; the rest is one
        NumPy pass). Returns ``Decided``: merge ``Decided.states`` into ``states`` for the next call.
        """
        codes, symbols = pd.factorize(candles["symbol"].to_numpy(object), sort=False)
        if (codes < 0).any():
            raise ValueError(f"{int((codes < 0).sum())} candles without a symbol")  # validated upstream: a bug
        symbols = [str(symbol) for symbol in symbols]
        columns, rows, new_states = self._decide(candles, codes.astype(np.int64), symbols,
                                                 [states.get(symbol) for symbol in symbols])
        return Decided(columns, rows, {symbol: new for symbol, new in zip(symbols, new_states) if new is not None})

    def _decide(self, candles: pd.DataFrame, symbol_index: np.ndarray, symbols: list[str],
                states: list[bytes | None]) -> tuple[dict[str, np.ndarray], np.ndarray, list[bytes | None]]:
        """(columns, rows, new state per symbol or None) of several symbols' candles in one pass:
        ``symbol_index[i]`` is the position in ``symbols`` (and ``states``, None for a new symbol) of the
        symbol of ``candles``' row ``i``."""
        params = self.params
        memory = unpack_bucket(states)
        last = memory.rows("engine.last", [-1, np.nan, np.nan, 0])  # open_time, close, volume, candles seen
        last_open_time, seen = last[:, 0].astype(np.int64), last[:, 3].astype(np.int64)
        last_step = memory.scalars("engine.tick", np.nan)  # the smallest price step seen (features.price_steps)
        # Closes that did not move, and candles counted (the market kind): a state from before it counts from now on.
        still_before, counted_before = memory.rows("engine.still", [0.0, 0.0]).T
        open_time = candles["open_time"].to_numpy(np.int64)
        rows = new_rows(symbol_index, open_time, last_open_time)
        segments = Segments(np.bincount(symbol_index[rows], minlength=len(symbols)))
        if not len(rows):
            return {}, rows, [None] * len(symbols)
        open_time = open_time[rows]
        values = {name: candles[name].to_numpy(float)[rows] for name in ("open", "high", "low", "close", "volume",
                                                                         "taker_buy_base", "trades", "tick_size")
                  if name in candles}
        features = candle_features({**values, "open_time": open_time}, segments, last_open_time, last[:, 1],
                                   last[:, 2], params.interval_ms, params.range.floor_pct, last_step)
        positions = seen[segments.ids] + segments.ranks
        still = (features.log_return == 0).astype(float)
        running = np.cumsum(still)
        still_seen = still_before[segments.ids] + running - (running - still)[segments.starts[segments.ids]]
        closes_counted = counted_before[segments.ids] + segments.ranks + 1  # this candle included
        still_share = still_seen / closes_counted

        baselines, detectors = Baselines(params), build(params)
        baselines.restore(memory)
        for detector in detectors:
            detector.restore(memory.within(detector.key))
        context = baselines.context(features, positions, segments)
        scores = {detector.name: detector.score(context) for detector in detectors}
        baselines.learn(context)
        for detector in detectors:
            detector.learn(context)

        eligible = {detector.name: detector.votes(scores[detector.name], positions) for detector in detectors}
        surprises = {detector.name: surprise(params.calibration.get(detector.name), detector.size(scores[detector.name]))
                     for detector in detectors}
        prior = params.consensus.own_prior_candles
        if prior > 0:  # each symbol's own history says how rare each detector's reading is for it
            own = memory.rows(OWN_STATE, [0.0] * (len(detectors) * (1 + len(OWN_LEVELS)))).reshape(
                len(symbols), len(detectors), -1)
            counted = np.column_stack([(positions >= detector.warmup) & np.isfinite(scores[detector.name])
                                       for detector in detectors])
            calibrated, own = own_surprise(np.column_stack([surprises[detector.name] for detector in detectors]),
                                           counted, segments.ids, segments.starts, own, prior,
                                           params.consensus.own_memory_candles)
            surprises = {detector.name: calibrated[:, index] for index, detector in enumerate(detectors)}
        votes, is_anomaly, confidence, reasons, fused = consensus(
            eligible, {detector.name: detector.reason for detector in detectors}, scores, surprises,
            params.consensus, params.calibration,
            own_votes={detector.name: eligible[detector.name] for detector in detectors if detector.own_vote},
            thin=params.consensus.is_thin(still_share))
        if self.keep_group_surprise:  # training calibrates pairs of groups on these
            names = list(eligible)
            self.group_surprise = group_surprise(names, np.column_stack(
                [np.where(eligible[name], surprises[name], 0.0) for name in names]), params.consensus.groups)

        columns = {
            "symbol": np.asarray(symbols, dtype=object)[segments.ids],
            "interval": _column_or(candles, "interval", self.interval_name, rows),
            "open_time": open_time,
            "close_time": _column_or(candles, "close_time", open_time + params.interval_ms - 1, rows),
            "close": features.close, "return_pct": features.return_pct, "log_return": features.log_return,
            "range_pct": features.range_pct, "volume": features.volume, "volume_change": features.volume_change,
            "volume_ratio": context.volume_ratio, "range_ratio": np.exp(context.log_range_ratio),
            "taker_buy_share": features.taker_buy_share,
            "window_mean": context.window_mean, "window_std": context.window_std,
            **{detector.column: scores[detector.name] for detector in detectors},
            "surprise": fused, "still_share": still_share,
            "votes": votes, "is_anomaly": is_anomaly, "confidence": confidence, "reasons": reasons,
            "market_event": np.zeros(len(rows), dtype=bool),
            "produced_at": _column_or(candles, "produced_at", 0, rows),
        }
        present = np.flatnonzero(segments.counts)
        ends = segments.ends - 1  # each symbol's last new candle (symbols without one are not stored)
        arrays = {
            "engine.last": np.column_stack([open_time[ends], features.close[ends], features.volume[ends],
                                            seen + segments.counts]),
            "engine.tick": features.min_step[ends],
            "engine.still": np.column_stack([still_seen[ends], closes_counted[ends]]),
            **({OWN_STATE: own.reshape(len(symbols), -1)} if prior > 0 else {}),
            **baselines.state(),
            **{f"{detector.key}.{name}": values for detector in detectors for name, values in detector.state().items()},
        }
        new_states: list[bytes | None] = [None] * len(symbols)
        for symbol, blob in zip(present, pack_bucket(arrays, present)):
            new_states[symbol] = blob
        return columns, rows, new_states


OWN_STATE = "calibration.own"  # per symbol and detector: candles counted, then those at each calibration.OWN_LEVELS


def calibration_scores(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The quantity each detector's calibration table is about (its ``size``: absolute value for two-sided ones)."""
    sides = {detector.name: detector.two_sided for detector in DETECTORS}
    return {name: np.abs(values) if sides[name] else values for name, values in scores.items()}


def _column_or(candles: pd.DataFrame, name: str, default, rows: np.ndarray) -> np.ndarray:
    """The column at ``rows`` where present, ``default`` where it is missing or null."""
    if name not in candles.columns:
        return np.broadcast_to(default, len(rows)).copy()
    column = candles[name].to_numpy()[rows]
    missing = pd.isna(column)
    return np.where(missing, default, column) if missing.any() else column
