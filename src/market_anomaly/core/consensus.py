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
    ``MARKET n/N``. Returns a copy; works on one micro-batch or a whole offline file.
    """
    marked = decisions.copy(deep=False)  # columns are replaced below, never written into
    if marked.empty:
        return marked
    # One decision per symbol and minute (the engine drops duplicates), so rows per minute = active symbols.
    _, minute, active = np.unique(marked["open_time"].to_numpy(np.int64), return_inverse=True, return_counts=True)
    flagged = marked["is_anomaly"].to_numpy(bool)
    anomalous = np.bincount(minute, weights=flagged).astype(np.int64)
    event = flagged & (anomalous[minute] >= market_threshold(active, params.market)[minute])
    marked["market_event"] = marked["market_event"].to_numpy(bool) | event
    reasons = marked["reasons"].to_numpy(object).copy()
    for row in np.flatnonzero(event):
        tag = f"MARKET {anomalous[minute[row]]}/{active[minute[row]]}"
        if tag not in reasons[row]:
            reasons[row] = reasons[row] + REASON_SEPARATOR + tag if reasons[row] else tag
    marked["reasons"] = reasons
    return marked
