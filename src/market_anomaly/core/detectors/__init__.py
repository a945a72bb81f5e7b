"""The detectors and their registry: ``DETECTORS`` is the one list the rest of the system derives from.

Names (reasons, calibration, consensus), score columns (the decision record), warm-ups
(training), sidedness (votes and calibration), default consensus groups, parameter
sections (``model_params.json``) and state-key prefixes are each detector's own class
attributes (``base.Detector``); nothing restates them. The order is the order of the
reasons and of the score columns. Adding a detector: its module here, and a line below.

>>> DETECTORS[0].name, DETECTORS[0].column, DETECTORS[0].two_sided
('Z-SCORE', 'zscore', True)
>>> default_groups()[:3]  # by group number: Z-SCORE 0, BURST and DRIFT 1, the four volume detectors 2, ...
[['Z-SCORE'], ['BURST', 'DRIFT'], ['VOLUME', 'VOLUME RUN', 'VOLUME SURGE', 'ABSORBED VOLUME']]
>>> default_groups()[-1]  # the number of trades is news of its own, not one more reading of volume
['TRADES RUN']
"""

from __future__ import annotations

from market_anomaly.core.detectors.base import Detector
from market_anomaly.core.detectors.model import LearnedSurprise
from market_anomaly.core.detectors.runs import (AbsorbedVolume, Burst, Drift, Reversal, TradesRun, Trend,
                                                VolumeRun, VolumeSurge)
from market_anomaly.core.detectors.volatility import Volatility
from market_anomaly.core.detectors.volume import VolumeSpike
from market_anomaly.core.detectors.zscore import ReturnZScore

DETECTORS: tuple[type[Detector], ...] = (
    ReturnZScore, Volatility, VolumeSpike, VolumeRun, VolumeSurge, AbsorbedVolume, TradesRun, Burst, Drift, Trend,
    Reversal, LearnedSurprise,
)

DETECTOR_NAMES = tuple(detector.name for detector in DETECTORS)
SCORE_COLUMNS = {detector.name: detector.column for detector in DETECTORS}


def sections() -> dict[str, tuple[type, dict]]:
    """Parameter section -> (its dataclass, its defaults), in registry order (shared sections once)."""
    found: dict[str, tuple[type, dict]] = {}
    for detector in DETECTORS:
        found.setdefault(detector.section, (detector.Params, detector.defaults))
    return found


def default_groups() -> list[list[str]]:
    """``consensus.groups`` of a new parameter file: detectors by their ``group`` number, in number order."""
    numbers = sorted({detector.group for detector in DETECTORS if detector.group is not None})
    return [[detector.name for detector in DETECTORS if detector.group == number] for number in numbers]


def build(params) -> list[Detector]:
    """One instance of every registered detector, configured from ``params`` (a ``ModelParams``)."""
    return [detector(params) for detector in DETECTORS]


def warmups(params) -> dict[str, int]:
    """Candles each detector needs before its scores count, by name."""
    return {detector.name: detector.warmup for detector in build(params)}


__all__ = ["DETECTORS", "DETECTOR_NAMES", "SCORE_COLUMNS", "AbsorbedVolume", "Burst", "Detector", "Drift",
           "LearnedSurprise", "ReturnZScore", "Reversal", "TradesRun", "Trend", "Volatility", "VolumeRun", "VolumeSpike",
           "VolumeSurge", "build", "default_groups", "sections", "warmups"]
