"""Calibration: every detector's score on one scale, the *surprise* ``-log10`` of its tail probability.

Detectors speak different units (sigmas, multiples of a median, model distances) and
their tails differ (a 10x volume minute is common, a 10-sigma return is not). ``train``
measures each detector's score distribution on the training candles and stores a table:
the score at tail probabilities ``10**-s`` for surprise levels ``s`` (``SURPRISE_GRID``,
as far as the training sample reaches), plus a Pareto tail slope (surprise per unit of
log score, fitted on the upper levels) to go beyond the largest training score.
``surprise(table, scores)`` maps scores to that scale: 3.0 means "one candle in a
thousand of normal history scores this high", whatever the detector.

Consensus then compares detectors on the same footing and one threshold (set by
``train`` for a false-alarm budget on the training candles) replaces hand-picked
per-detector rules.

>>> rng = np.random.default_rng(0)
>>> table = fit_table(np.abs(rng.standard_normal(100_000)))
>>> [round(float(s), 1) for s in surprise(table, np.array([0.0, 1.645, 3.29, 4.5]))]  # exact: 0, 1, 3, 5.2
[0.0, 1.0, 3.0, 5.0]
"""

from __future__ import annotations

import math

import numpy as np

SURPRISE_GRID = np.round(np.arange(0.25, 6.01, 0.25), 2)
MIN_CALIBRATION_SCORES = 100  # fewer finite training scores than this calibrate nothing
MIN_TAIL_COUNT = 2  # a level needs at least this many training scores above it
MAX_SURPRISE = 10.0  # extrapolation beyond the training sample is capped: one in 10**10 candles
DEFAULT_TAIL_SLOPE = 2.0  # where the tail is too short to fit: a tenfold score is 4.6 levels rarer
TAIL_FROM = 2.0     # the Pareto tail slope is fitted on levels from this surprise up


def fit_table(scores: np.ndarray) -> dict:
    """The calibration table of ``scores`` (finite ones; NaN means "not defined yet" and is ignored)."""
    scores = np.sort(scores[np.isfinite(scores)])
    if len(scores) < MIN_CALIBRATION_SCORES:
        raise ValueError(f"{len(scores)} scores are too few to calibrate a detector")
    levels = SURPRISE_GRID[len(scores) * 10.0 ** -SURPRISE_GRID >= MIN_TAIL_COUNT]
    quantiles = np.quantile(scores, 1 - 10.0 ** -levels)
    quantiles = np.maximum.accumulate(quantiles)
    levels, quantiles = np.concatenate([[0.0], levels]), np.concatenate([[scores[0]], quantiles])
    keep = np.concatenate([[True], np.diff(quantiles) > 0])  # ties (discrete scores): the lowest level keeps it
    levels, quantiles = levels[keep], quantiles[keep]
    if len(levels) < 2:  # (almost) always the same score: the largest seen is one in len(scores)
        levels = np.array([0.0, np.log10(len(scores))])
        quantiles = np.array([quantiles[0], max(scores[-1], quantiles[0] + 1.0)])
    tail = (levels >= TAIL_FROM) & (quantiles > 0)
    if tail.sum() >= 2:
        slope = float(np.polyfit(np.log(quantiles[tail]), levels[tail], 1)[0])
    else:
        slope = DEFAULT_TAIL_SLOPE
    return {"scores": [float(q) for q in quantiles], "surprise": [float(s) for s in levels],
            "tail_slope": round(max(slope, 1.0), 4)}


def surprise(table: dict | None, scores: np.ndarray) -> np.ndarray:
    """Surprise of each score (0 where the score is NaN or the detector is not calibrated)."""
    scores = np.asarray(scores, dtype=float)
    if not table:
        return np.zeros(len(scores))
    points, levels = np.asarray(table["scores"]), np.asarray(table["surprise"])
    finite = np.where(np.isfinite(scores), scores, -np.inf)
    result = np.interp(finite, points, levels)
    top = points[-1]
    beyond = finite > top
    if beyond.any() and top > 0:
        result[beyond] = levels[-1] + table["tail_slope"] * np.log(finite[beyond] / top)
    result = np.minimum(result, MAX_SURPRISE)
    return np.where(np.isfinite(scores), result, 0.0)


def finite_number(value) -> bool:
    """A JSON number that is neither infinite nor NaN (JSON as Python reads it allows both)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def calibration_problem(table) -> str | None:
    """Why ``table`` is not a usable calibration table (None when it is)."""
    if not isinstance(table, dict) or set(table) != {"scores", "surprise", "tail_slope"}:
        return "expected an object with scores, surprise and tail_slope"
    points, levels, slope = table["scores"], table["surprise"], table["tail_slope"]
    if not (isinstance(points, list) and isinstance(levels, list) and all(map(finite_number, [*points, *levels]))
            and len(points) == len(levels) >= 2):
        return "scores and surprise must be lists of as many finite numbers (at least 2)"
    if any(b <= a for a, b in zip(points, points[1:])) or any(b <= a for a, b in zip(levels, levels[1:])):
        return "scores and surprise must increase"
    if not finite_number(slope) or not slope > 0:
        return "tail_slope must be a positive finite number"
    return None


# -- per-symbol self-calibration ----------------------------------------------------------------------

# Pooled surprise levels at which a symbol counts its candles: the bulk of its distribution, where a month
# holds hundreds of candles per level, so a few dozen anomalies (even injected ones) hardly move the count;
# the tail beyond keeps the pooled table's spacing from the last level's own value.
OWN_LEVELS = np.round(np.arange(0.5, 2.01, 0.5), 2)


def own_surprise(pooled: np.ndarray, counted: np.ndarray, symbols: np.ndarray, starts: np.ndarray,
                 history: np.ndarray, prior: float, memory: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each candle's surprises re-measured on its own symbol's history, and the symbols' updated counts.

    The pooled tables say how rare a score is on the training candles, where thin pairs (whose one-tick
    moves and single trades after silence are common) and liquid pairs (where a 6-sigma minute is rare)
    are mixed; no one table fits both. So each symbol counts its candles at or above each of ``OWN_LEVELS``
    of pooled surprise and a candle's surprise is ``-log10`` of its symbol's own tail share there, the
    pooled share ``10**-level`` weighing ``prior`` candles: ``(count + prior * 10**-level) / (counted +
    prior)``; linear between levels, one for one beyond the last (the rare tail is not counted: a symbol's
    own anomalies must not make themselves ordinary). A new symbol is judged by the pooled table; a thin
    pair soon finds its one-tick moves ordinary, a liquid pair its spikes rarer. Counts cover the candles
    *before* each one (in order), so the result does not depend on how the stream is cut into calls.
    With ``memory`` (counted candles, 0: all), a symbol forgets: each time its candles counted reach twice
    ``memory``, every count is halved (rounded down), so they span one to two ``memory`` of its recent
    candles and follow a change of regime. Whole numbers halved at fixed counts: any cut of the stream
    gives the same counts, exactly.

    ``pooled``: surprise per candle and detector (columns); ``counted``: which of them count (warmed up, a
    score); ``symbols``: each candle's symbol (a row of ``history``), ``starts``: each symbol's first candle
    (candles grouped by symbol); ``history``: per symbol and detector, the candles counted, then the count
    at each level.

    >>> history = np.zeros((1, 1, 1 + len(OWN_LEVELS)))
    >>> pooled = np.array([[3.0]] * 4 + [[1.0]])
    >>> own, counts = own_surprise(pooled, np.ones((5, 1), bool), np.zeros(5, int), np.array([0]), history, 10.0)
    >>> own[:, 0].round(2).tolist(), counts[0, 0, :2].tolist()  # always at 3: 3 (beyond the levels) turns ordinary
    ([3.0, 2.0, 1.76, 1.62, 0.45], [5.0, 5.0])
    >>> _, counts = own_surprise(pooled, np.ones((5, 1), bool), np.zeros(5, int), np.array([0]), history, 10.0, 2)
    >>> counts[0, 0].tolist()  # 4 counted, all at every level: halved to 2 each; then a candle at 1.0
    [3.0, 3.0, 3.0, 2.0, 2.0]
    """
    length, detectors = pooled.shape
    top = len(OWN_LEVELS)
    # laid out (detector, level, candle): the running sums go along contiguous memory (5x faster than across)
    surprises, included = pooled.T, counted.T
    counts = np.empty((detectors, 1 + top, length))
    counts[:, 0] = included
    counts[:, 1:] = (surprises[:, None, :] >= OWN_LEVELS[None, :, None]) & included[:, None, :]
    running = np.empty_like(counts)  # exclusive: the call's candles before this one (of every symbol)
    running[:, :, 0] = 0
    np.cumsum(counts[:, :, :-1], axis=2, out=running[:, :, 1:])
    ends = np.concatenate([starts[1:], [length]]) - 1
    present = ends >= starts
    before, final = _counts_before(running, counts, history[present], starts[present], ends[present],
                                   (np.cumsum(present) - 1)[symbols], memory)
    # the bracketing levels of each pooled surprise (level 0: every candle counted is at or above it)
    step = OWN_LEVELS[0]
    below = np.minimum((np.maximum(surprises, 0) / step).astype(np.int64), top)
    levels = np.concatenate([[0.0], OWN_LEVELS])
    total = np.log10(before[:, 0] + prior)
    shares = prior * 10.0 ** -levels  # the pooled table's weight at each level
    # each candle's place in ``before`` (flat) at level 0: a level is ``length`` further on
    at_level_0 = np.arange(detectors)[:, None] * (1 + top) * length + np.arange(length)[None, :]
    flat = before.reshape(-1)

    def own_at(index: np.ndarray) -> np.ndarray:
        return total - np.log10(np.take(flat, at_level_0 + index * length) + shares[index])

    low, high = own_at(below), own_at(np.minimum(below + 1, top))
    result = low + (surprises - levels[below]) / step * (high - low)
    beyond = below == top  # few: past the last level, one for one
    result[beyond] = low[beyond] + surprises[beyond] - levels[top]
    updated = history.copy()
    updated[present] = final.transpose(2, 0, 1)
    return np.maximum(result, 0.0).T, updated


def _counts_before(running: np.ndarray, counts: np.ndarray, known: np.ndarray, firsts: np.ndarray,
                   lasts: np.ndarray, owner: np.ndarray, memory: int) -> tuple[np.ndarray, np.ndarray]:
    """``own_surprise``'s counts before each candle (detector, level, candle), and each symbol's after its last.

    ``running``: the call's counts before each candle, all symbols in a row (its memory becomes the result);
    ``counts``: each candle's own; ``known``: each symbol with candles, its counts at the call's start;
    ``firsts``/``lasts``: its first and last candle; ``owner``: each candle's symbol (a row of ``known``). A
    symbol's counts are ``running`` plus an offset that changes only where its candles start and, with
    ``memory``, where a halving starts an *epoch* (the first when its total reaches ``2 * memory``, its state
    always below, each later one ``memory`` counted candles on): each offset is marked there and holds until
    the next mark. All whole numbers, so the sums are exact.
    """
    known = known.transpose(1, 2, 0)  # (detector, level, symbol)
    if memory:  # a state kept without forgetting, or with a longer memory, starts below two memories too
        known = _halved_below(known, memory)
    starting = known - running[:, :, firsts]  # (detector, level, symbol)
    detectors = np.arange(len(known))
    marks = [(np.repeat(detectors, len(firsts)), np.tile(firsts, len(known)),
              starting.transpose(0, 2, 1).reshape(-1, starting.shape[1]))]  # (detector, candle, offset from there)
    if memory:
        offset = starting.copy()  # each symbol's current epoch's (the marks above may be views of ``starting``)
        # each candle's epoch: 0 until its symbol's first halving, one more each ``memory`` counted candles on
        # (whole numbers, so the division's floor is exact; in place, one array for the passes over all candles)
        epoch = np.take(running[:, 0, firsts] + 2 * memory - known[:, 0], owner, axis=1)
        np.subtract(running[:, 0], epoch, out=epoch)  # counted candles past the first halving (negative before)
        epoch /= memory
        np.floor(epoch, out=epoch)
        epoch += 1
        np.maximum(epoch, 0, out=epoch)
        opens = np.zeros(epoch.shape, dtype=bool)
        opens[:, 1:] = (epoch[:, 1:] != epoch[:, :-1]) & (epoch[:, 1:] > 0)  # (a symbol's first candle: epoch 0)
        opening_detector, opening_candle = np.nonzero(opens)
        opening_epoch = epoch[opening_detector, opening_candle]
        for number in range(1, int(epoch.max(initial=0)) + 1):  # in order: each halves the counts the last left
            this = opening_epoch == number
            detector, candle = opening_detector[this], opening_candle[this]
            symbol = owner[candle]
            halved = np.floor((offset[detector, :, symbol] + running[detector, :, candle]) / 2)
            offset[detector, :, symbol] = halved - running[detector, :, candle]
            marks.append((detector, candle, offset[detector, :, symbol]))
    detector, candle, values = (np.concatenate(parts) for parts in zip(*marks))
    order = np.lexsort((candle, detector))
    detector, candle, values = detector[order], candle[order], values[order]
    # each offset holds from its candle to the next mark on the detector's row (the first is at candle 0)
    length = running.shape[2]
    until = np.append(candle[1:], length)
    until[np.append(detector[1:] != detector[:-1], True)] = length
    spans = until - candle
    before = running
    for level in range(before.shape[1]):
        before[:, level] += np.repeat(values[:, level], spans).reshape(len(known), length)
    final = before[:, :, lasts] + counts[:, :, lasts]
    if memory:  # the last candle closed an epoch: the state starts the next one
        final = _halved_below(final, memory)
    return before, final


def _halved_below(counts: np.ndarray, memory: int) -> np.ndarray:
    """(detector, level, symbol) counts, each detector's and symbol's halved (rounded down) until its total (level
    0) is below ``2 * memory``."""
    while (over := counts[:, :1] >= 2 * memory).any():
        counts = np.where(over, np.floor(counts / 2), counts)
    return counts
