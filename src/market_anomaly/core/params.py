"""Model parameters (``model_params.json`` + the learned model file next to it) and their live reload.

Every threshold, window, warm-up length, vote rule and the market-wide rule comes from the
file; the only numbers in code are ``DEFAULTS``, which ``market-anomaly train`` writes
(with the fitted values) into a new file. All keys are required, unknown keys are errors:
a typo must not silently fall back to a default.

Units: windows, warm-ups, ``refresh`` and ``guard`` count candles; ``history`` counts
volatility samples (one per ``refresh`` candles); ``*_pct`` are percent.

Decisions: each detector's score is mapped to a common scale, its *surprise* (``-log10`` of
its tail probability on the training candles; ``calibration``, written by ``train``), the
surprises are fused (largest of ``consensus.groups``, and of calibrated pairs of groups), and
a candle is an anomaly at ``consensus.threshold``, which ``train`` sets so its own candles
raise at most ``consensus.false_alarm_budget`` alarm episodes per symbol-day. A detector's
own ``threshold`` is the floor its raw score must pass to count at all (and to be named in an
anomaly's reasons); ``consensus.required``/``alone`` can add hand-written rules (empty by default).

Warm-up: a detector votes from its ``warmup``-th candle on, and only once its baseline
exists (``window`` + ``guard`` candles; for volatility ``window`` + ``history`` x
``refresh``), so the defaults set each warm-up to at least that.
"""

from __future__ import annotations

import json
import logging
import os
import types
import typing
import zipfile
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import numpy as np

from market_anomaly.core.calibration import calibration_problem, finite_number
from market_anomaly.core.detectors import DETECTOR_NAMES, default_groups, sections
from market_anomaly.core.detectors.base import MAX_WINDOW, check_windows
from market_anomaly.core.learned import MinorComponents

log = logging.getLogger("market_anomaly.core")

CONFIDENCE_LEVELS = ("LOW", "MEDIUM", "HIGH")
CONFIDENCE_RANKS = ("NONE", *CONFIDENCE_LEVELS)  # every decision's confidence, in order (NONE: not an anomaly)
MARKETS = ("liquid", "thin")  # kinds of market (``ConsensusParams.market_kind``)
MIN_OWN_MEMORY = 100  # a symbol's counts must hold more than a few candles at each level to mean anything
MAX_INTEGER = 10 ** 9  # counts and milliseconds in the file (a day is 86,400,000 ms); windows are bounded tighter

# The detectors' own sections (return_zscore, volatility, volume, runs, learned): declared by each detector.
SECTIONS = sections()

DEFAULTS: dict = {
    "version": 1,
    "trained_on": {},
    "interval_ms": 60_000,
    "refresh": 5,
    "guard": 2,
    "range": {"window": 60, "floor_pct": 0.0001},
    **{name: dict(defaults) for name, (_, defaults) in SECTIONS.items()},
    "calibration": {},
    "consensus": {"required": [], "alone": {}, "vote_surprise": 3.0, "groups": default_groups(),
                  "pairs": True, "offsets": {}, "threshold": 5.0, "false_alarm_budget": 0.7,
                  "confidence": {"LOW": 0.0, "MEDIUM": 0.75, "HIGH": 2.0}, "own_prior_candles": 1440.0,
                  "own_memory_candles": 10080, "thin_still_share": 0.4,
                  "thin_confidence": {"LOW": 0.0, "MEDIUM": 0.75, "HIGH": 2.0}},
    "market": {"min_symbols": 3, "min_fraction": 0.3},
}


class InvalidParams(ValueError):
    """The parameter file (or its model file) is missing, malformed or out of range."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"invalid model parameters {path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class RangeParams:
    window: int
    floor_pct: float  # a candle with high == low has this range, so its logarithm exists

    def __post_init__(self):
        check_windows(window=self.window)
        if not self.floor_pct > 0:
            raise ValueError(f"floor_pct must be above 0, got {self.floor_pct}")


@dataclass(frozen=True)
class ConsensusParams:
    required: tuple[str, ...]          # rule path: these detectors' own votes together flag (empty: no rule)
    alone: typing.Mapping[str, float]  # rule path: detector -> score at which its vote alone flags
    vote_surprise: float       # a detector votes (and is named in the reasons) at this calibrated surprise
    groups: tuple[tuple[str, ...], ...]  # fused detectors in groups of dependent ones (others only vote)
    pairs: bool                # also fuse calibrated pairs of groups (k-of-n on one scale; tables from train)
    offsets: typing.Mapping[str, float]  # candidate (group label or pair key) -> surprise added (train --tune)
    threshold: float           # anomaly when the fused surprise reaches this (set by train for the budget)
    false_alarm_budget: float  # alarm episodes per symbol-day train allows on its own (training) candles
    confidence: typing.Mapping[str, float]  # level -> fused surprise above the threshold it needs
    # per-symbol self-calibration (calibration.own_surprise): the pooled tables' weight, in candles, against a
    # symbol's own history (0: off, every symbol judged by the pooled tables)
    own_prior_candles: float = 0.0
    # ... and how much of its history a symbol remembers: its counts are halved each time they reach twice this
    # many candles (0: it never forgets)
    own_memory_candles: int = 0
    # A symbol is *thin* (prices in whole ticks, most minutes without a trade) while at least this share of its
    # closes so far did not move (0: no symbol is); its anomalies take ``thin_confidence``'s margins, set by train
    # on the thin training series, so a level is as rare on a thin pair as on a liquid one (absent: ``confidence``)
    thin_still_share: float = 0.0
    thin_confidence: typing.Mapping[str, float] | None = None

    def is_thin(self, still_share):
        """Whether a symbol with this share of its closes unmoved (a number or an array) is judged as thin."""
        return np.asarray(still_share) >= self.thin_still_share if self.thin_still_share > 0 else np.zeros(
            np.shape(still_share), bool)

    def market_kind(self, still_share: np.ndarray) -> str:
        """The kind of market a symbol is judged as from its decisions' ``still_share`` (its last one)."""
        return MARKETS[int(self.is_thin(np.asarray(still_share)[-1:]).any())]

    def margins(self, thin: bool) -> list[float]:
        """Each confidence level's margin above the threshold, in ``CONFIDENCE_LEVELS`` order, for a thin symbol or
        a liquid one."""
        levels = self.thin_confidence if thin and self.thin_confidence is not None else self.confidence
        return [levels[level] for level in CONFIDENCE_LEVELS]


@dataclass(frozen=True)
class MarketParams:
    min_symbols: int
    min_fraction: float


@dataclass(frozen=True, eq=False)
class ModelParams:
    """Immutable; compared by identity (engines are cached per object).

    The detectors' sections (``SECTIONS``) are attributes too: ``params.volatility`` is
    ``params.sections["volatility"]``.
    """

    version: int
    trained_on: typing.Mapping[str, object]
    interval_ms: int
    refresh: int  # rolling baselines are recomputed every this many candles
    guard: int    # and end this many candles before their refresh point (an event cannot mask itself)
    range: RangeParams
    sections: typing.Mapping[str, object]  # detector section name -> its frozen dataclass (see ``SECTIONS``)
    calibration: typing.Mapping[str, object]  # detector -> {"scores", "surprise", "tail_slope"} (see calibration)
    consensus: ConsensusParams
    market: MarketParams
    model: MinorComponents | None = None  # the fitted learned model (None only before training)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_json(self) -> dict:
        """The file's content (without the fitted arrays, which live in ``learned.file``)."""
        def plain(value):
            if hasattr(value, "__dataclass_fields__"):
                return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            if isinstance(value, tuple):
                return [plain(item) for item in value]
            return dict(value) if isinstance(value, types.MappingProxyType) else value
        document = {}
        for name, value in plain(self).items():
            if name == "sections":
                document.update({section: plain(values) for section, values in self.sections.items()})
            elif name != "model":
                document[name] = value
        return document


def params_with(**changes) -> ModelParams:
    """``DEFAULTS`` with some values changed (a section's dict is merged into its defaults), without a model: for
    examples and tests.

    >>> params_with(refresh=2, volume={"threshold": 4.0}).volume
    VolumeParams(window=60, threshold=4.0, warmup=60, surge_window=240, surge_quantile=0.99, surge_floor=0.5)
    """
    document = json.loads(json.dumps(DEFAULTS))
    for name, value in changes.items():
        document[name] = {**document[name], **value} if isinstance(value, dict) else value
    return params_from_dict(document)


def group_label(group: tuple[str, ...]) -> str:
    """A detector group's name in calibration keys and offsets: ``"BURST/DRIFT"``."""
    return "/".join(group)


def pair_keys(groups) -> list[tuple[int, int, str]]:
    """(i, j, calibration key) for every pair of groups: ``"Z-SCORE & MODEL"``, ``"BURST/DRIFT & TREND"``."""
    return [(i, j, f"{group_label(groups[i])} & {group_label(groups[j])}")
            for i in range(len(groups)) for j in range(i + 1, len(groups))]


def params_from_dict(raw: dict, path: Path | str = "<dict>", model: MinorComponents | None = None) -> ModelParams:
    """Validate ``raw`` (the JSON document) and build ``ModelParams``; raises ``InvalidParams``."""
    if not isinstance(raw, dict):
        raise InvalidParams(path, "the document must be a JSON object")
    missing = [name for name in SECTIONS if name not in raw]
    if missing:
        raise InvalidParams(path, f"missing keys {', '.join(missing)}")
    detector_sections = {name: _build(kind, raw[name], path, f"{name}.") for name, (kind, _) in SECTIONS.items()}
    params = _build(ModelParams, {key: value for key, value in raw.items() if key not in SECTIONS}, path, "",
                    skip=("model", "sections"), extra={"sections": types.MappingProxyType(detector_sections)})
    if not (1 <= params.refresh <= MAX_WINDOW and params.guard <= MAX_WINDOW and params.interval_ms >= 1):
        raise InvalidParams(path, f"refresh must be between 1 and {MAX_WINDOW}, guard at most {MAX_WINDOW} and "
                                  f"interval_ms at least 1")
    if params.consensus.own_prior_candles < 0:
        raise InvalidParams(path, "consensus.own_prior_candles counts candles: at least 0")
    if not (params.consensus.own_memory_candles == 0 or MIN_OWN_MEMORY <= params.consensus.own_memory_candles
            <= MAX_INTEGER):
        raise InvalidParams(path, f"consensus.own_memory_candles counts candles: 0 (never forget) or "
                                  f"{MIN_OWN_MEMORY} to {MAX_INTEGER}")
    if params.consensus.threshold < 0 or params.consensus.vote_surprise < 0:
        raise InvalidParams(path, "consensus.threshold and consensus.vote_surprise are surprises: at least 0")
    for name in ("confidence", "thin_confidence"):
        levels = getattr(params.consensus, name)
        if levels is None:  # thin_confidence absent (an older file): thin symbols take ``confidence``
            continue
        margins = list(levels.values())
        if (tuple(levels) != CONFIDENCE_LEVELS or not all(finite_number(v) and v >= 0 for v in margins)
                or margins != sorted(margins)):
            raise InvalidParams(path, f"consensus.{name} must map {', '.join(CONFIDENCE_LEVELS)} to increasing "
                                      f"non-negative surprise margins, got {dict(levels)}")
    if not 0 <= params.consensus.thin_still_share <= 1:
        raise InvalidParams(path, "consensus.thin_still_share is a share of closes: from 0 (off) to 1")
    pairs = {key for _, _, key in pair_keys(params.consensus.groups)}
    labels = {group_label(group) for group in params.consensus.groups}
    bad_offsets = sorted(set(params.consensus.offsets) - pairs - labels)
    if bad_offsets or not all(map(finite_number, params.consensus.offsets.values())):
        raise InvalidParams(path, f"consensus.offsets maps group labels or pair keys to numbers; got "
                                  f"{dict(params.consensus.offsets)}")
    unknown = sorted((set(params.calibration) - pairs | {name for group in params.consensus.groups for name in group}
                      | set(params.consensus.required) | set(params.consensus.alone)) - set(DETECTOR_NAMES))
    if unknown:
        raise InvalidParams(path, f"calibration or consensus.fused names unknown detectors {unknown}; expected some of "
                                  f"{', '.join(DETECTOR_NAMES)}")
    if not all(map(finite_number, params.consensus.alone.values())):
        raise InvalidParams(path, f"consensus.alone maps detectors to finite scores, got {dict(params.consensus.alone)}")
    for name, table in params.calibration.items():
        problem = calibration_problem(table)
        if problem:
            raise InvalidParams(path, f"calibration.{name}: {problem}")
    if not 0 <= params.market.min_fraction <= 1:
        raise InvalidParams(path, "market.min_fraction must be between 0 and 1")
    return _with_model(params, model)


def load_params(path: Path | str) -> ModelParams:
    """Read and validate ``model_params.json`` and the learned model file it names (relative to it)."""
    return with_learned_model(read_params(path), path)


def read_params(path: Path | str) -> ModelParams:
    """``model_params.json`` alone, validated (its ``model`` not loaded yet: ``with_learned_model``)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as error:
        raise InvalidParams(path, f"cannot read it ({error.strerror or error})") from None
    except ValueError as error:
        raise InvalidParams(path, f"not valid JSON ({error})") from None
    return params_from_dict(raw, path)


def with_learned_model(params: ModelParams, path: Path | str) -> ModelParams:
    """``params`` (read from ``path``) with the learned model of the file it names."""
    model_path = model_file(path, params)
    try:
        model = MinorComponents.load(model_path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, MemoryError) as error:
        raise InvalidParams(path, f"learned model {model_path} unusable ({error})") from None
    return _with_model(params, model)


def model_file(params_path: Path | str, params: ModelParams) -> Path:
    """Where the learned model lives: ``learned.file`` relative to the parameter file."""
    return Path(params_path).resolve().parent / params.learned.file


class ParamsWatcher:
    """Current parameters of a file; re-read when it (or its model file) changes, cheaply checked by ``stat``.

    Returns the same object while nothing changed. A bad new version (malformed, non-finite
    or out of range, a model file that is not one) is logged once at ERROR and the previous
    parameters stay in force; with no previous version the error is raised (``InvalidParams``).
    Each file is stamped *before* it is read, so an edit that lands while a version is being
    read leaves a newer stamp behind and is read on the next call, never skipped.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._params: ModelParams | None = None
        self._loaded: list[tuple[Path, tuple | None]] = []    # (file, stamp) of what the parameters were read from
        self._rejected: list[tuple[Path, tuple | None]] = []  # and of the version rejected since

    def current(self) -> ModelParams:
        if self._params is not None and (_unchanged(self._loaded) or self._rejected and _unchanged(self._rejected)):
            return self._params
        read = [(self.path, _stamp(self.path))]
        try:
            params = read_params(self.path)
            model_path = model_file(self.path, params)
            read.append((model_path, _stamp(model_path)))
            params = with_learned_model(params, self.path)
        except InvalidParams as error:
            if self._params is None:
                raise
            log.error("%s; keeping the parameters loaded before", error)
            self._rejected = read
            return self._params
        if self._params is not None:
            log.info("model parameters reloaded from %s", self.path)
        self._params, self._loaded, self._rejected = params, read, []
        return params


def _unchanged(stamped: list[tuple[Path, tuple | None]]) -> bool:
    return all(_stamp(path) == stamp for path, stamp in stamped)


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime, size) of a file, None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _with_model(params: ModelParams, model: MinorComponents | None) -> ModelParams:
    values = {f.name: getattr(params, f.name) for f in fields(params)}
    return ModelParams(**{**values, "model": model})


def _build(cls, raw, path, where: str, skip: tuple[str, ...] = (), extra: dict | None = None):
    """A frozen dataclass from a JSON object: every field required, no unknown keys, types checked, then the
    dataclass's own checks (a ``ValueError`` from ``__post_init__``); ``extra`` fields are given as they are."""
    if not isinstance(raw, dict):
        raise InvalidParams(path, f"{where or 'the document'} must be a JSON object")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.name not in skip]
    unknown = sorted(set(raw) - set(names))
    optional = {f.name for f in fields(cls) if f.default is not MISSING}  # added later: older files may omit them
    nullable = {f.name for f in fields(cls) if f.default is None}  # null: not set (as when omitted)
    missing = [name for name in names if name not in raw and name not in optional]
    if unknown or missing:
        raise InvalidParams(path, "; ".join(filter(None, [
            unknown and f"unknown keys {', '.join(where + k for k in unknown)}",
            missing and f"missing keys {', '.join(where + k for k in missing)}"])))
    values = {}
    for name in names:
        if name not in raw or (raw[name] is None and name in nullable):
            continue  # an optional field: its default
        kind, value, key = hints[name], raw[name], where + name
        if hasattr(kind, "__dataclass_fields__"):
            values[name] = _build(kind, value, path, key + ".")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INTEGER:
                raise InvalidParams(path, f"{key} must be an integer from 0 to {MAX_INTEGER}, got {value!r}")
            values[name] = value
        elif kind is float:
            if not finite_number(value):
                raise InvalidParams(path, f"{key} must be a finite number, got {value!r}")
            values[name] = float(value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise InvalidParams(path, f"{key} must be true or false, got {value!r}")
            values[name] = value
        elif kind is str:
            if not isinstance(value, str) or not value:
                raise InvalidParams(path, f"{key} must be a non-empty string, got {value!r}")
            values[name] = value
        elif kind == tuple[tuple[str, ...], ...]:
            if not isinstance(value, list) or not all(isinstance(group, list) and group and all(
                    isinstance(item, str) for item in group) for group in value) or not value:
                raise InvalidParams(path, f"{key} must be a non-empty list of non-empty lists of names, got {value!r}")
            values[name] = tuple(tuple(group) for group in value)
        elif typing.get_origin(kind) is tuple:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise InvalidParams(path, f"{key} must be a list of names, got {value!r}")
            values[name] = tuple(value)
        else:  # a mapping
            if not isinstance(value, dict):
                raise InvalidParams(path, f"{key} must be a JSON object, got {value!r}")
            values[name] = types.MappingProxyType(dict(value))
    try:
        return cls(**values, **(extra or {}))
    except ValueError as error:
        raise InvalidParams(path, f"{where[:-1] or 'the document'}: {error}") from None
