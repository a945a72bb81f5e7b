"""Consensus: detectors' votes -> decision, confidence and reasons; market-wide events across symbols."""

from __future__ import annotations

import numpy as np
import pandas as pd

from market_anomaly.detection.params import CONFIDENCE_LEVELS, ConsensusParams, MarketParams

REASON_SEPARATOR = " | "


def consensus(votes_by_detector: dict[str, np.ndarray], reasons_by_detector: dict[str, callable],
              scores_by_detector: dict[str, np.ndarray], params: ConsensusParams
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(votes, is_anomaly, confidence, reasons) per candle.

    Confidence grows with the number of agreeing detectors (``params.confidence``: the
    votes each level needs). A candle is an anomaly with at least ``params.min_votes``
    votes including every detector in ``params.required`` (big moves on big volume are
    what busy markets do, so that pair alone is no news: the move and the learned model
    must agree; the other detectors add confidence and reasons), or when one detector's
    score reaches its ``params.alone`` level (a deviation so large, or so inconsistent,
    that it needs no second opinion). Reasons name every detector that voted, with the
    size of its deviation.

    >>> from market_anomaly.detection.params import ConsensusParams
    >>> params = ConsensusParams(min_votes=2, required=("MODEL",), alone={"Z-SCORE": 14.0},
    ...                          confidence={"LOW": 1, "MEDIUM": 2, "HIGH": 3})
    >>> votes = {"Z-SCORE": np.array([True, True, True, False, True]),
    ...          "VOLUME": np.array([False, True, False, False, True]),
    ...          "MODEL": np.array([True, False, False, False, True])}
    >>> scores = {"Z-SCORE": np.array([7.24, 6.5, -15.0, 1.0, 9.0]), "VOLUME": np.array([1.0, 14.0, 1.0, 1.0, 9.0]),
    ...           "MODEL": np.array([0.6, 0.1, 0.2, 0.0, 0.9])}
    >>> reasons = {"Z-SCORE": lambda s: f"Z-SCORE {abs(s):.1f}σ", "VOLUME": lambda s: f"VOLUME {s:.0f}x",
    ...            "MODEL": lambda s: f"MODEL {s:.1f}x"}
    >>> count, anomaly, confidence, why = consensus(votes, reasons, scores, params)
    >>> count.tolist(), anomaly.tolist(), confidence.tolist()
    ([2, 2, 1, 0, 3], [True, False, True, False, True], ['MEDIUM', 'MEDIUM', 'LOW', 'NONE', 'HIGH'])
    >>> why.tolist()  # doctest: +NORMALIZE_WHITESPACE
    ['Z-SCORE 7.2σ | MODEL 0.6x', 'Z-SCORE 6.5σ | VOLUME 14x', 'Z-SCORE 15.0σ', '',
     'Z-SCORE 9.0σ | VOLUME 9x | MODEL 0.9x']
    """
    names = list(votes_by_detector)
    matrix = np.column_stack([votes_by_detector[name] for name in names])
    count = matrix.sum(axis=1).astype(np.int64)
    levels = np.array(("NONE",) + CONFIDENCE_LEVELS, dtype=object)
    level_index = np.searchsorted([params.confidence[level] for level in CONFIDENCE_LEVELS], count, side="right")
    reasons = np.full(len(count), "", dtype=object)
    voted = np.flatnonzero(count)  # only the few rows with a vote pay for string formatting
    texts = []
    for column, name in enumerate(names):
        describe, scores = reasons_by_detector[name], scores_by_detector[name]
        texts.append([describe(scores[row]) if matrix[row, column] else "" for row in voted])
    reasons[voted] = [REASON_SEPARATOR.join(filter(None, row)) for row in zip(*texts)]
    enough = count >= params.min_votes
    for name in params.required:
        enough &= votes_by_detector[name]
    alone = np.zeros(len(count), dtype=bool)
    for name, level in params.alone.items():
        if name in votes_by_detector:
            with np.errstate(invalid="ignore"):
                alone |= votes_by_detector[name] & (np.abs(scores_by_detector[name]) >= level)
    return count, enough | alone, levels[level_index], reasons


def market_threshold(active_symbols: np.ndarray, params: MarketParams) -> np.ndarray:
    """Anomalous symbols needed in one minute for a market-wide event, given the symbols active in it.

    >>> from market_anomaly.detection.params import MarketParams
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
