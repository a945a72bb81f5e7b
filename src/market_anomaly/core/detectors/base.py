"""The detector contract: what every detector states about itself and the two calls it answers.

A detector is a class constructed from the whole ``ModelParams`` (it reads its own
``section``). Per call of the engine, for many symbols' new candles at once:

1. ``restore(state)``: its memory, from a ``state.BucketState`` already at its ``key``
   (names it wrote with ``state()``; a new symbol has none);
2. ``score(context) -> array``: one score per new candle from the ``baselines.Context``
   (features and shared baselines, computed once) and its memory, never from later
   candles; NaN where not defined yet;
3. ``learn(context)``: append the new candles to its memory;
4. ``state() -> {name: Tails or one value per symbol}``: its memory; the engine stores it as
   ``f"{key}.{name}"`` in each symbol's state.

Whatever the chunking (one call per candle, per micro-batch or per series) and however
many symbols share a call, the scores are the same. ``votes`` silences a detector during
its ``warmup`` (candles its symbol has seen) and where its *size* (``size``: the score, or
its absolute value when ``two_sided``) is below ``threshold``.
"""

from __future__ import annotations

import numpy as np


class Detector:
    """Identity (class attributes) and the calls every detector answers; subclasses set the attributes."""

    name = ""     # "Z-SCORE": in reasons, calibration tables and consensus groups
    column = ""   # its score's column in the decision record
    key = ""      # the prefix of its names in a symbol's state
    section = ""  # its parameter section in model_params.json (several detectors may share one)
    Params: type = object  # the section's frozen dataclass (every key required, see params._build)
    defaults: dict = {}    # the section's built-in values (what ``train`` writes into a new file)
    group: int | None = None  # default consensus group: the same number fuses as one group, groups by number;
    # None: it votes and is named in reasons, but is not fused
    two_sided = False  # either direction is news (size = |score|); else only high scores
    own_vote = True    # past its own threshold it is named in an anomaly's reasons (runs detectors: surprise only)
    threshold: float
    warmup: int

    def __init__(self, params):
        section = getattr(params, self.section)
        self.threshold, self.warmup = section.threshold, section.warmup

    def score(self, context) -> np.ndarray:
        raise NotImplementedError

    def learn(self, context) -> None:
        """A detector without memory (a function of the context alone) learns nothing."""

    def state(self) -> dict[str, object]:
        return {}

    def restore(self, state) -> None:
        """Nothing to restore without memory."""

    def size(self, scores: np.ndarray) -> np.ndarray:
        """How far the scores are from normal, on the side that is news: what votes and what is calibrated."""
        return np.abs(scores) if self.two_sided else scores

    def votes(self, scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (positions >= self.warmup) & (self.size(scores) >= self.threshold)

    def reason(self, score: float) -> str:
        return f"{self.name} {abs(score):.1f}σ"
