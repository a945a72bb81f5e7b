"""Consensus: detectors' votes -> decision, confidence and reasons; market-wide events across symbols."""

from __future__ import annotations

import numpy as np
import pandas as pd

from market_anomaly.core.calibration import surprise
from market_anomaly.core.params import CONFIDENCE_LEVELS, ConsensusParams, MarketParams, group_label, pair_keys

REASON_SEPARATOR = " | "


def group_surprise(names: list[str], surprise: np.ndarray, groups) -> np.ndarray:
    """Per candle and group, the largest surprise of the group's detectors (columns of ``surprise`` by ``names``)."""
    columns = []
    for group in groups:
        members = [names.index(name) for name in group if name in names]
        columns.append(surprise[:, members].max(axis=1) if members else np.zeros(len(surprise)))
    return np.column_stack(columns)


def candidates(groups_surprise: np.ndarray, groups, calibration, pairs: bool) -> dict[str, np.ndarray]:
    """The fused surprise's candidates: each group's surprise and, with ``pairs``, each calibrated pair's.

    A pair's score is the smaller of its two group surprises ("both at least this surprising"),
    calibrated like a detector on the training candles: two moderately unusual readings that
    rarely come together count as one rare event (a k-of-n vote on a common scale).
    """
    found = {group_label(group): groups_surprise[:, i] for i, group in enumerate(groups)}
    if pairs:
        for i, j, key in pair_keys(groups):
            table = calibration.get(key)
            if table:
                found[key] = surprise(table, np.minimum(groups_surprise[:, i], groups_surprise[:, j]))
    return found


def fuse(groups_surprise: np.ndarray, groups, calibration, pairs: bool, offsets=None) -> np.ndarray:
    """Fused surprise: the largest candidate (``candidates``) plus its offset (``train --tune``; default 0)."""
    offsets = offsets or {}
    found = candidates(groups_surprise, groups, calibration, pairs)
    return np.max([values + offsets.get(key, 0.0) for key, values in found.items()], axis=0)


def consensus(eligible_by_detector: dict[str, np.ndarray], reasons_by_detector: dict[str, callable],
              scores_by_detector: dict[str, np.ndarray], surprise_by_detector: dict[str, np.ndarray],
              params: ConsensusParams, calibration=None, own_votes: dict[str, np.ndarray] | None = None,
              thin: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(votes, is_anomaly, confidence, reasons, fused surprise) per candle.

    Every detector's score is on one scale, its calibrated *surprise* (``calibration``:
    ``-log10`` of how often normal training history scores that high). A detector counts
    where it is *eligible* (warmed up and its raw score past its own floor). Detectors that
    measure the same thing form ``params.groups`` (a group's surprise is its largest); the
    fused surprise is the largest group surprise or, with ``params.pairs``, the largest
    calibrated surprise of two groups together (``fuse``), each plus its ``params.offsets``
    entry (tuned by ``train`` on events injected into the training candles; default 0). A candle is an anomaly when the
    fused surprise reaches ``params.threshold``, which ``train`` sets so the training candles
    raise at most ``params.false_alarm_budget`` alarm episodes per symbol-day. Optional rule
    path: every detector in ``params.required`` voting on its own raw threshold, or one in
    ``params.alone`` reaching its level, also flags (empty by default).

    A detector *votes* when its surprise reaches ``params.vote_surprise``, or on an anomaly
    when it is in ``own_votes`` (past its own threshold); votes count the agreeing
    detectors, and the reasons name each voter (an anomaly always names at least its most
    surprising detector) with the size of its deviation. Confidence of an anomaly grows
    with the fused surprise above the threshold (``params.confidence``: the margin each level
    needs; ``params.thin_confidence`` on the candles ``thin`` marks); NONE for the rest.

    >>> from market_anomaly.core.params import ConsensusParams
    >>> params = ConsensusParams(required=(), alone={}, vote_surprise=3.0, groups=(("Z-SCORE",), ("VOLUME",)),
    ...                          pairs=False, offsets={}, threshold=5.0, false_alarm_budget=0.5,
    ...                          confidence={"LOW": 0.0, "MEDIUM": 1.0, "HIGH": 2.0})
    >>> eligible = {"Z-SCORE": np.array([True, True, True, True]), "VOLUME": np.array([True, True, True, False])}
    >>> scores = {"Z-SCORE": np.array([7.24, 6.5, 2.0, 15.0]), "VOLUME": np.array([1.0, 14.0, 3.0, 30.0])}
    >>> surprises = {"Z-SCORE": np.array([5.2, 4.0, 1.0, 8.0]), "VOLUME": np.array([0.1, 3.5, 1.5, 9.0])}
    >>> reasons = {"Z-SCORE": lambda s: f"Z-SCORE {abs(s):.1f}σ", "VOLUME": lambda s: f"VOLUME {s:.0f}x"}
    >>> count, anomaly, confidence, why, fused = consensus(eligible, reasons, scores, surprises, params)
    >>> count.tolist(), anomaly.tolist(), confidence.tolist(), fused.tolist()
    ([1, 2, 0, 1], [True, False, False, True], ['LOW', 'NONE', 'NONE', 'HIGH'], [5.2, 4.0, 1.5, 8.0])
    >>> why.tolist()
    ['Z-SCORE 7.2σ', 'Z-SCORE 6.5σ | VOLUME 14x', '', 'Z-SCORE 15.0σ']
    """
    names = list(eligible_by_detector)
    surprise_matrix = np.column_stack([np.where(eligible_by_detector[name], surprise_by_detector[name], 0.0)
                                       for name in names])
    fused = fuse(group_surprise(names, surprise_matrix, params.groups), params.groups, calibration or {},
                 params.pairs, params.offsets)
    is_anomaly = fused >= params.threshold
    eligible = np.column_stack([eligible_by_detector[name] for name in names])
    rule = np.zeros(len(fused), dtype=bool)
    if params.required:
        rule = np.all([eligible_by_detector[name] for name in params.required], axis=0)
    for name, level in params.alone.items():
        if name in eligible_by_detector:
            with np.errstate(invalid="ignore"):
                rule |= eligible_by_detector[name] & (np.abs(scores_by_detector[name]) >= level)
    is_anomaly |= rule
    fusing = np.array([any(name in group for group in params.groups) for name in names])
    matrix = (surprise_matrix >= params.vote_surprise) | (rule[:, None] & eligible)
    strongest = np.zeros_like(matrix)
    strongest[np.arange(len(fused)), np.where(fusing, surprise_matrix, -1.0).argmax(axis=1)] = True
    matrix |= strongest & is_anomaly[:, None]  # an anomaly always names at least its strongest detector
    for column, name in enumerate(names):  # and every detector past its own threshold (``own_votes``)
        if own_votes and name in own_votes:
            matrix[:, column] |= own_votes[name] & is_anomaly
    count = matrix.sum(axis=1).astype(np.int64)
    margins = np.array(params.margins(thin=False))
    if thin is not None:
        margins = np.where(np.asarray(thin, bool)[:, None], np.array(params.margins(thin=True)), margins)
    reached = np.sum(np.maximum(fused - params.threshold, 0)[:, None] >= margins, axis=-1)  # levels reached
    level_index = np.where(is_anomaly, np.maximum(reached, 1), 0)  # an anomaly is at least LOW (rule path too)
    levels = np.array(("NONE",) + CONFIDENCE_LEVELS, dtype=object)
    reasons = np.full(len(count), "", dtype=object)
    voted = np.flatnonzero(count)  # only the few rows with a vote pay for string formatting
    texts = []
    for column, name in enumerate(names):
        describe, scores = reasons_by_detector[name], scores_by_detector[name]
        texts.append([describe(scores[row]) if matrix[row, column] else "" for row in voted])
    reasons[voted] = [REASON_SEPARATOR.join(filter(None, row)) for row in zip(*texts)]
    return count, is_anomaly, levels[level_index], reasons, fused


def market_threshold(active_symbols: np.ndarray, params: MarketParams) -> np.ndarray:
    """Anomalous symbols needed in one minute for a market-wide event, given the symbols active in it.

    >>> from market_anomaly.core.params import MarketParams
    >>> market_threshold(np.array([1, 8, 20]), MarketParams(min_symbols=3, min_fraction=0.3)).tolist()
    [3, 3, 6]
    """
    return np.maximum(params.min_symbols, np.ceil(params.min_fraction * active_symbols)).astype(np.int64)


def mark_market_events(decisions: pd.DataFrame, params) -> pd.DataFrame:
    """Mark anomalies shared by many symbols in the same minute as one market-wide event.

    In each ``open_time`` minute, when at least ``market_threshold`` of the symbols with a
    decision are anomalous, their rows get ``market_event = True`` and the reason
    ``MARKET n/N``. Returns a copy; works on a whole offline file (a stream's batches go through a
    ``MarketTally``, which gives the same marks once it has seen the whole minute).
    """
    return MarketTally(params.market, remember=False).mark(decisions)[0]


class MarketTally:
    """The market-wide mark across batches (polls, micro-batches, members): each minute judged on all its decisions.

    Per minute (``interval``, ``open_time``) it keeps the symbols decided and the anomalous ones. ``mark(batch)``
    adds a batch, marks its anomalies by the minute's counts so far (``mark_market_events``' rule), and returns
    as *corrections* the anomalies of earlier batches whose mark the new counts change: marked now, marked with
    other counts, or no longer marked (a minute's first symbols can look like a market event that the rest of the
    minute does not confirm). ``merge`` adds the symbols another member decided. Once a minute is whole, the last
    decision given for each of its keys equals the offline mark. Counts are sets, so a replayed candle or a
    member's own tally coming back counts once. Only the newest ``keep_minutes`` minutes are kept (None: all).

    >>> from market_anomaly.core.params import MarketParams
    >>> tally = MarketTally(MarketParams(min_symbols=2, min_fraction=0.5))
    >>> first = pd.DataFrame({"symbol": ["A", "B"], "open_time": [0, 0], "is_anomaly": [True, False],
    ...                       "reasons": ["Z-SCORE 9σ", ""], "market_event": [False, False]})
    >>> tally.mark(first)[0]["market_event"].tolist()  # 1 of 2: not yet
    [False, False]
    >>> marked, corrections = tally.mark(first.assign(symbol=["C", "D"], is_anomaly=[True, False]))
    >>> marked["reasons"].tolist(), corrections[["symbol", "reasons"]].values.tolist()  # 2 of 4: A marked after all
    (['Z-SCORE 9σ | MARKET 2/4', ''], [['A', 'Z-SCORE 9σ | MARKET 2/4']])
    """

    def __init__(self, params: MarketParams, keep_minutes: int | None = None, remember: bool = True):
        self.params = params
        self.keep_minutes = keep_minutes
        self.remember = remember  # False: each batch on its own (a whole file), nothing kept
        # (interval, open_time) -> [symbols decided, anomalous symbols, {symbol: (its anomaly as given, its tag)}]
        self.minutes: dict[tuple, list] = {}

    def mark(self, decisions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(the batch with its anomalies marked, corrections of earlier batches' anomalies); neither input modified."""
        marked = decisions.copy(deep=False)  # columns are replaced below, never written into
        if marked.empty:
            return marked, marked.iloc[:0]
        keys, minute, symbols, flagged = _by_minute(marked)
        if self.remember:
            for key, rows in zip(keys, _rows_by_minute(minute)):
                tally = self.minutes.setdefault(key, [set(), set(), {}])
                tally[0].update(symbols[rows])
                tally[1].update(symbols[rows][flagged[rows]])
            decided = [len(self.minutes[key][0]) for key in keys]
            anomalous = [len(self.minutes[key][1]) for key in keys]
        else:  # one whole batch: the engine gives one decision per symbol and minute, so rows are symbols
            decided = np.bincount(minute, minlength=len(keys))
            anomalous = np.bincount(minute, weights=flagged, minlength=len(keys)).astype(np.int64)
        reasons = marked["reasons"].to_numpy(object).copy()
        events = marked["market_event"].to_numpy(bool).copy()
        anomalies = np.flatnonzero(flagged)
        for row in anomalies:
            index = minute[row]
            tag = market_tag(anomalous[index], decided[index], self.params)
            if self.remember:
                self.minutes[keys[index]][2][symbols[row]] = (marked.iloc[[row]], tag)
            if tag:
                events[row] = True
                reasons[row] = _tagged(reasons[row], tag)
        marked["market_event"] = events
        marked["reasons"] = reasons
        if not self.remember:
            return marked, marked.iloc[:0]
        corrections = self._corrections(keys, {(keys[minute[row]], symbols[row]) for row in anomalies})
        self._forget()
        return marked, corrections

    def merge(self, interval: str, open_time: int, decided, anomalous) -> pd.DataFrame:
        """Add the symbols another member decided (and those of them anomalous) in a minute; returns the
        corrections this member's anomalies of that minute then need."""
        key = (interval or "", int(open_time))
        tally = self.minutes.setdefault(key, [set(), set(), {}])
        tally[0].update(decided)
        tally[1].update(anomalous)
        corrections = self._corrections([key], set())
        self._forget()
        return corrections

    @staticmethod
    def minute_counts(decisions: pd.DataFrame) -> list[tuple[str, int, list[str], list[str]]]:
        """A batch's symbols per minute, (interval, open_time, decided, anomalous): what ``merge`` takes."""
        if decisions.empty:
            return []
        keys, minute, symbols, flagged = _by_minute(decisions)
        return [(*key, symbols[rows].tolist(), symbols[rows][flagged[rows]].tolist())
                for key, rows in zip(keys, _rows_by_minute(minute))]

    def _corrections(self, keys, just_given: set) -> pd.DataFrame:
        """The kept anomalies of ``keys``' minutes (but those ``just_given``) whose tag has changed, re-tagged."""
        rows = []
        for key in keys:
            decided, anomalous, given = self.minutes[key]
            tag = market_tag(len(anomalous), len(decided), self.params)
            for symbol, (row, old_tag) in given.items():
                if old_tag != tag and (key, symbol) not in just_given:
                    given[symbol] = (row, tag)
                    rows.append(row.assign(market_event=bool(tag) or bool(row["market_event"].iloc[0]),
                                           reasons=_tagged(row["reasons"].iloc[0], tag)))
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def _forget(self) -> None:
        if self.keep_minutes is not None and len(self.minutes) > self.keep_minutes:
            for key in sorted(self.minutes, key=lambda key: key[1])[:len(self.minutes) - self.keep_minutes]:
                del self.minutes[key]


def market_tag(anomalous: int, decided: int, params: MarketParams) -> str:
    """``MARKET n/N`` when ``anomalous`` of the ``decided`` symbols of a minute make a market-wide event, else ''."""
    return f"MARKET {anomalous}/{decided}" if anomalous >= market_threshold(np.array([decided]), params)[0] else ""


def _by_minute(decisions: pd.DataFrame):
    """A batch's distinct minutes (interval, open_time), each row's index into them, its symbols and anomaly flags."""
    intervals = decisions["interval"] if "interval" in decisions else pd.Series("", index=decisions.index)
    codes, names = pd.factorize(intervals.fillna(""))
    # One integer per pair: open times (epoch ms) stay below 2**47, Binance has 16 intervals.
    distinct, minute = np.unique(decisions["open_time"].to_numpy(np.int64) * 64 + codes, return_inverse=True)
    names = names.tolist()
    keys = [(names[code % 64], code // 64) for code in distinct.tolist()]
    return keys, minute.reshape(-1), decisions["symbol"].to_numpy(object), decisions["is_anomaly"].to_numpy(bool)


def _rows_by_minute(minute: np.ndarray) -> list[np.ndarray]:
    """Each minute's rows, in the order of the minutes' indices."""
    order = np.argsort(minute, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(minute[order])) + 1)


def _tagged(reasons: str, tag: str) -> str:
    """``reasons`` with its MARKET tag replaced by ``tag`` (none: removed)."""
    kept = [part for part in (reasons or "").split(REASON_SEPARATOR) if part and not part.startswith("MARKET ")]
    return REASON_SEPARATOR.join([*kept, tag] if tag else kept)
