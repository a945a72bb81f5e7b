"""Training: fit the learned model on historical candles and write ``model_params.json`` + the model file.

One implementation runs in one process and on a Spark cluster. ``train`` makes its passes
over a *series collection*: ``LocalSeries`` (frames in this process) or
``market_anomaly.spark.training.SparkSeries`` (a Spark DataFrame: the passes run on the
executors). A pass is a module-level function ``(key, frame, *args) -> {name: array}``
applied to every series (sorted by ``open_time``, one candle per ``open_time``); it returns
compact per-candle NumPy columns (scores, surprises), never candles. The driver fits on
those columns: the learned model, the calibration tables, the fusion offsets, the threshold.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from market_anomaly.core.calibration import MIN_CALIBRATION_SCORES, fit_table
from market_anomaly.core.consensus import candidates
from market_anomaly.core.engine import DetectionEngine, calibration_scores
from market_anomaly.training.injection import KINDS, inject, injection_slots
from market_anomaly.core.learned import INPUT_NAMES
from market_anomaly.core.params import DEFAULTS, MARKETS, ModelParams, pair_keys, params_from_dict
from market_anomaly.files import write_atomically
from market_anomaly.core.detectors import SCORE_COLUMNS, LearnedSurprise, warmups

log = logging.getLogger("market_anomaly.train")

DEFAULT_ALARM_QUANTILE = 0.999
DEFAULT_TUNE_INJECTIONS = 1500  # events injected into the training candles to tune the fusion's offsets
TRAINING_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")  # all that training reads of a candle
TRAINING_OPTIONAL = ("tick_size", "trades")  # ... and where the candles carry them, the price step and trade count

Arrays = dict[str, np.ndarray]
SeriesPass = Callable[..., Arrays]  # (key, frame, *args) -> compact arrays


def score_series(params: ModelParams, series: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each series through a fresh engine state in one call (offline scoring)."""
    return {key: _decisions(key, frame, params) for key, frame in series.items()}


def ordered_series(frame: pd.DataFrame) -> pd.DataFrame:
    """A series as every pass sees it: ``TRAINING_COLUMNS`` (and ``TRAINING_OPTIONAL`` ones it has), by ``open_time``,
    the first row of each ``open_time``."""
    ordered = frame.sort_values("open_time", kind="stable")
    columns = [*TRAINING_COLUMNS, *(name for name in TRAINING_OPTIONAL if name in ordered)]
    return ordered[~ordered["open_time"].duplicated()][columns].reset_index(drop=True)


def series_span(candles: int, first_ms: int, last_ms: int) -> dict:
    """A series' entry in ``trained_on.series``."""
    return {"candles": int(candles), "from": _iso(first_ms), "to": _iso(last_ms)}


class LocalSeries:
    """The training series held in this process (e.g. ``candle_files.series_by_symbol``), by key."""

    def __init__(self, series: dict[str, pd.DataFrame]):
        self.series = {key: ordered_series(frame) for key, frame in series.items()}

    def keys(self) -> list[str]:
        return list(self.series)

    def lengths(self) -> dict[str, int]:
        return {key: len(frame) for key, frame in self.series.items()}

    def spans(self) -> dict[str, dict]:
        return {key: series_span(len(frame), frame["open_time"].min(), frame["open_time"].max())
                for key, frame in self.series.items()}

    def map(self, function: SeriesPass, *args) -> dict[str, Arrays]:
        """``function(key, frame, *args)`` for each series in turn, by key in ``keys()`` order."""
        return {key: function(key, frame, *args) for key, frame in self.series.items()}


@dataclass(frozen=True)
class TrainConfig:
    """How ``train`` fits, as one value (built once by the command line, ``cli.train``).

    ``base``: the parameter document to start from (default ``DEFAULTS``); ``sources``: what the candles
    came from, recorded in the parameter file.

    >>> TrainConfig(tune_injections=0).alarm_quantile
    0.999
    """

    base: dict | None = None
    alarm_quantile: float = DEFAULT_ALARM_QUANTILE
    tune_injections: int = DEFAULT_TUNE_INJECTIONS
    tune_seed: int = 0
    sources: tuple[str, ...] = ()
    # confidence level -> symbol-days per alarm episode at or above it (``confidence_margins``)
    confidence_days: tuple[tuple[str, float], ...] = (("MEDIUM", 7.0), ("HIGH", 30.0))
    # (symbol, epoch ms) of known real events (``evaluation.read_announced_events``): the minutes around each
    # (``KNOWN_EVENT_MINUTES``) are not counted as false alarms for the budget, nor for the confidence levels
    known_events: tuple[tuple[str, int], ...] = ()


def train(series, config: TrainConfig = TrainConfig()) -> ModelParams:
    """Fit the learned model, calibrate every detector, and set the alarm threshold for the false-alarm budget.

    ``series``: frames by key (``candle_files.series_by_symbol``) or a series collection
    (``LocalSeries``, ``spark.training.SparkSeries``). Passes over the training candles,
    nothing else (no held-out data):

    1. fit the learned model on the candles' inputs (after warm-up), alarm level at ``alarm_quantile``;
    2. score every detector and store its calibration table (``calibration.fit_table``: score -> surprise),
       then, with ``consensus.pairs``, one for each pair of detector groups (both at least this surprising);
    3. with ``tune_injections``: inject that many labelled events into *these* candles and
       tune ``consensus.offsets`` (``tune_offsets``) for the most events caught within 5 minutes
       at the budget below;
    4. fuse the calibrated surprises and set ``consensus.threshold`` to the lowest level (on a
       0.05 grid, at least ``consensus.vote_surprise``) at which the training candles raise at most
       ``consensus.false_alarm_budget`` alarm episodes per symbol-day, counting the flags of the
       rule path (``consensus.required``/``alone``) too;
    5. set ``consensus.confidence`` by rarity (``confidence_margins``): MEDIUM and HIGH at the lowest fused
       surprises that the training series of a kind of market reach at most once a symbol-week and once a
       symbol-month (``config.confidence_days``), on the liquid series for ``confidence`` and on the thin ones
       (``consensus.thin_still_share`` of their closes unmoved) for ``thin_confidence``. The minutes around
       ``config.known_events`` count neither for the budget (4.) nor for the levels.

    ``base`` is the parameter document to start from (default ``DEFAULTS``); windows, floors and
    the budget come from it, the fitted values are filled in and the model is attached.
    """
    base, alarm_quantile, tune_injections = config.base, config.alarm_quantile, config.tune_injections
    collection = LocalSeries(series) if isinstance(series, dict) else series
    document = json.loads(json.dumps(base or DEFAULTS))
    document["calibration"] = {}
    untrained = params_from_dict(document)
    learned = LearnedSurprise(untrained)
    inputs = [result["inputs"] for result in collection.map(learned_inputs, untrained).values()]
    learned.fit(np.concatenate(inputs) if inputs else np.empty((0, len(INPUT_NAMES))), alarm_quantile)
    document["learned"].update(typical_score=round(learned.typical, 6), alarm_score=round(learned.alarm, 6))

    uncalibrated = params_from_dict(document, model=learned.model)
    scored = list(collection.map(detector_scores, uncalibrated).values())
    calibration = {}
    for name in warmups(uncalibrated):
        training_scores = np.concatenate([series_scores[name] for series_scores in scored])
        finite = int(np.isfinite(training_scores).sum())
        if finite >= MIN_CALIBRATION_SCORES:
            calibration[name] = fit_table(training_scores)
        else:  # e.g. TRADES RUN on candles without trade counts: not calibrated, it adds no surprise
            log.warning("%s scored %d training candles, too few to calibrate; it stays silent", name, finite)
    document["calibration"] = calibration
    consensus = uncalibrated.consensus
    if consensus.pairs:
        groups = np.concatenate([result["groups"] for result in collection.map(
            group_surprises, params_from_dict(document, model=learned.model)).values()])
        for i, j, key in pair_keys(consensus.groups):
            document["calibration"][key] = fit_table(np.minimum(groups[:, i], groups[:, j]))

    tuning = {}
    if tune_injections > 0:
        offsets, tuning = tune_offsets(params_from_dict(document, model=learned.model), collection,
                                       tune_injections, config.tune_seed)
        document["consensus"]["offsets"] = offsets
    document["consensus"]["threshold"] = 1e9  # the rule path alone
    known = dict(config.known_events)
    decided = collection.map(fused_and_rule, params_from_dict(document, model=learned.model), known)
    lengths = collection.lengths()
    counted = {key: int(result["counted"][0]) for key, result in decided.items()}  # candles the budget counts
    fused = {key: result["fused"] for key, result in decided.items()}
    open_times = {key: result["open_time"] for key, result in decided.items()}
    threshold, rate = choose_threshold(fused, open_times, consensus.false_alarm_budget, consensus.vote_surprise,
                                       {key: result["rule"] for key, result in decided.items()}, days=_days(counted))
    document["consensus"]["threshold"] = threshold
    kinds = {key: consensus.market_kind(result["still_share"]) for key, result in decided.items()}
    levels, rarity = {}, {}
    for kind in MARKETS:  # confidence by rarity on each kind of market's own series
        keys = [key for key in decided if kinds[key] == kind]
        if keys:
            levels[kind], rarity[kind] = confidence_margins(
                {key: fused[key] for key in keys}, {key: open_times[key] for key in keys},
                {key: counted[key] for key in keys}, threshold, dict(config.confidence_days))
    document["consensus"]["confidence"] = levels.get("liquid", levels.get("thin"))
    document["consensus"]["thin_confidence"] = levels.get("thin", levels.get("liquid"))
    document["trained_on"] = {
        "sources": [str(source) for source in config.sources],
        "series": collection.spans(),
        "candles": int(sum(lengths.values())),
        "model": f"minor principal components of {', '.join(INPUT_NAMES)} "
                 f"(leading {untrained.learned.skip_components} ignored)",
        "alarm_quantile": alarm_quantile,
        "tuning": tuning,
        "threshold": f"fused surprise {threshold} gives {rate:.3f} alarm episodes per symbol-day on these candles "
                     f"(budget {consensus.false_alarm_budget})"
                     + (f", outside [{KNOWN_EVENT_MINUTES[0]}, +{KNOWN_EVENT_MINUTES[1]}] min of the known events of "
                        f"{', '.join(sorted(known))}" if known else ""),
        "confidence": rarity,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return params_from_dict(document, model=learned.model)


# -- passes: per series, module-level (a Spark worker unpickles them), compact arrays out -------------


def learned_inputs(key: str, frame: pd.DataFrame, params: ModelParams) -> Arrays:
    """The learned model's inputs per candle after its warm-up."""
    decisions = _decisions(key, frame, params)
    inputs = LearnedSurprise(params).inputs(
        decisions["zscore"].to_numpy(), np.log(decisions["volume_ratio"].to_numpy()),
        np.log(decisions["range_ratio"].to_numpy()))
    return {"inputs": inputs[params.learned.warmup:]}


def detector_scores(key: str, frame: pd.DataFrame, params: ModelParams) -> Arrays:
    """Each calibrated detector's score (``calibration_scores``) per candle after that detector's warm-up."""
    decisions = _decisions(key, frame, params)
    values = calibration_scores({name: decisions[column].to_numpy() for name, column in SCORE_COLUMNS.items()})
    return {name: values[name][warmup:] for name, warmup in warmups(params).items()}


def group_surprises(key: str, frame: pd.DataFrame, params: ModelParams) -> Arrays:
    """Each detector group's surprise per candle (columns by ``consensus.groups``) after the runs' warm-up."""
    return {"groups": _group_surprise(key, frame, params)[params.runs.warmup:]}


def fusion_candidates(key: str, frame: pd.DataFrame, params: ModelParams) -> Arrays:
    """The fused surprise's candidates (columns named by ``names``) and ``open_time`` of the candles some tuned
    offsets (at most ``MAX_OFFSET``) could lift to ``consensus.vote_surprise``, the lowest threshold: no other
    candle can be flagged, so leaving them out changes no threshold."""
    names, matrix = _candidate_matrix(key, frame, params)
    can_flag = matrix.max(axis=1) + MAX_OFFSET >= params.consensus.vote_surprise
    return {"names": np.array(names), "candidates": matrix[can_flag],
            "open_time": frame["open_time"].to_numpy()[can_flag]}


class InjectedEvent(NamedTuple):
    """One tuning event, fully described by the driver: where it goes, what it is, its own random seed."""

    round: int  # events of a round are injected into their series together and scored in one call
    series: str
    row: int
    kind: str
    seed: int


def event_candidates(key: str, frame: pd.DataFrame, params: ModelParams, events: list[InjectedEvent]) -> Arrays:
    """For this series' ``events`` (in their order): each candidate's largest surprise in the event's first
    ``DETECTION_WINDOW`` minutes. Each event draws from its own seed, so the result does not depend on
    which process injects it."""
    window = DETECTION_WINDOW * params.interval_ms
    maxima = []
    own = [event for event in events if event.series == key]
    for _, round_events in itertools.groupby(own, key=lambda event: event.round):
        injected, starts = frame, []
        for event in round_events:
            injected, label = inject(injected, event.kind, event.row, np.random.default_rng(event.seed))
            starts.append(label["open_time"])
        matrix = _candidate_matrix(key, injected, params)[1]
        times = injected["open_time"].to_numpy()
        maxima += [matrix[(times >= start) & (times < start + window)].max(axis=0) for start in starts]
    return {"maxima": np.array(maxima)}


KNOWN_EVENT_MINUTES = (-60, 180)  # around a known real event's announced time: not a false alarm


def outside_known_event(open_time: np.ndarray, announced: int | None) -> np.ndarray:
    """The candles (by ``open_time``, ms) outside ``KNOWN_EVENT_MINUTES`` of an event announced then (None: all).

    >>> outside_known_event(np.array([-61, -60, 180, 181]) * 60_000, 0).tolist()
    [True, False, False, True]
    """
    if announced is None:
        return np.ones(len(open_time), dtype=bool)
    offsets = (np.asarray(open_time) - announced) / 60_000
    return (offsets < KNOWN_EVENT_MINUTES[0]) | (offsets > KNOWN_EVENT_MINUTES[1])


def fused_and_rule(key: str, frame: pd.DataFrame, params: ModelParams, known_events: dict[str, int] | None = None
                   ) -> Arrays:
    """The fused surprise, the rule path's flag (``is_anomaly``) and ``open_time`` of the candles that can be
    flagged (fused surprise at least ``consensus.vote_surprise``, the lowest threshold, or a rule flag) and are
    not within ``KNOWN_EVENT_MINUTES`` of the symbol's known event (``known_events``: symbol -> epoch ms); how
    many candles that leaves (``counted``); the share of the series' closes that did not move (``still_share``,
    its last decision's)."""
    decisions = _decisions(key, frame, params)
    fused, rule = decisions["surprise"].to_numpy(), decisions["is_anomaly"].to_numpy(bool)
    open_time = decisions["open_time"].to_numpy()
    counted = outside_known_event(open_time, (known_events or {}).get(key.split("@")[0]))
    can_flag = ((fused >= params.consensus.vote_surprise) | rule) & counted
    return {"fused": fused[can_flag], "rule": rule[can_flag], "open_time": open_time[can_flag],
            "counted": np.array([counted.sum()]), "still_share": decisions["still_share"].to_numpy()[-1:]}


def _decisions(key: str, frame: pd.DataFrame, params: ModelParams) -> pd.DataFrame:
    return DetectionEngine(params).process(key.split("@")[0], frame, None)[0]


def _group_surprise(key: str, frame: pd.DataFrame, params: ModelParams) -> np.ndarray:
    engine = DetectionEngine(params)
    engine.keep_group_surprise = True
    engine.process(key.split("@")[0], frame, None)
    return engine.group_surprise


def _candidate_matrix(key: str, frame: pd.DataFrame, params: ModelParams) -> tuple[list[str], np.ndarray]:
    consensus = params.consensus
    found = candidates(_group_surprise(key, frame, params), consensus.groups, params.calibration, consensus.pairs)
    return list(found), np.column_stack(list(found.values()))


# -- tuning the fusion offsets (driver side) ---------------------------------------------------------

TUNE_STEPS = (-1.0, -0.5, 0.5, 1.0)
TUNE_SWEEPS = 2
MAX_OFFSET = 2.0
DETECTION_WINDOW = 5  # candles: an event counts when flagged within 5 minutes of its start


def tune_offsets(params: ModelParams, series, injections: int, seed: int) -> tuple[dict[str, float], dict]:
    """Offsets per fused candidate that catch the most events injected into the *training* candles.

    Events of every kind (``tuning_events``, after the warm-up, in rounds like ``evaluate``, at most
    ``TUNE_MAX_ROUNDS``) are scored; for each event, each candidate's largest surprise in its first
    5 minutes. Coordinate ascent over the offsets (steps ``TUNE_STEPS``, within +-``MAX_OFFSET``):
    a change is kept when, with the threshold re-set for the false-alarm budget on the
    untouched training candles, more events are caught. ``series`` is a series collection
    (see ``train``). Returns (offsets, summary).
    """
    consensus = params.consensus
    earliest = max(params.return_zscore.warmup, params.runs.warmup, params.learned.warmup, params.volume.warmup)
    lengths = series.lengths()
    events = tuning_events(lengths, injections, seed, earliest)
    if not events:
        return {}, {"injections": 0}
    days = _days(lengths)
    untouched = series.map(fusion_candidates, params)
    names = [str(name) for name in next(iter(untouched.values()))["names"]]
    normal = {key: result["candidates"] for key, result in untouched.items()}
    open_times = {key: result["open_time"] for key, result in untouched.items()}
    events = np.concatenate([result["maxima"] for result in series.map(event_candidates, params, events).values()
                             if len(result["maxima"])])

    def outcome(offsets: np.ndarray) -> tuple[float, float]:
        fused = {key: (matrix + offsets).max(axis=1) for key, matrix in normal.items()}
        threshold, _ = choose_threshold(fused, open_times, consensus.false_alarm_budget, consensus.vote_surprise,
                                        days=days)
        return float(np.mean((events + offsets).max(axis=1) >= threshold)), threshold

    offsets = np.zeros(len(names))
    start = best = outcome(offsets)[0]
    for _ in range(TUNE_SWEEPS):
        for column in range(len(names)):
            for step in TUNE_STEPS:
                trial = offsets.copy()
                trial[column] = np.clip(trial[column] + step, -MAX_OFFSET, MAX_OFFSET)
                recall = outcome(trial)[0]
                if recall > best + 1e-12:
                    best, offsets = recall, trial
    summary = {"injections": int(len(events)), "training_recall_untuned": round(start, 4),
               "training_recall_tuned": round(best, 4), "seed": seed}
    return {name: float(value) for name, value in zip(names, offsets) if value}, summary


def tuning_events(lengths: dict[str, int], injections: int, seed: int, earliest: int) -> list[InjectedEvent]:
    """The tuning's events, drawn here from the series' lengths alone: rounds of at most half the
    ``injection_slots`` (events ``TUNE_MIN_GAP`` candles apart, a quarter-gap jitter, like
    ``injection.inject_random``), kinds in turn, each event with its own seed; ordered by round and row."""
    # injection_slots reads only each frame's length
    slots = injection_slots({key: range(length) for key, length in lengths.items()}, TUNE_MIN_GAP, earliest)
    if len(slots) < 2:
        return []
    per_round = max(1, len(slots) // 2)
    total = min(injections, TUNE_MAX_ROUNDS * per_round)  # short histories: fewer events, not more rounds
    rng = np.random.default_rng(seed)
    events: list[InjectedEvent] = []
    for number in range(-(-total // per_round)):
        for slot in sorted(rng.choice(len(slots), size=min(per_round, total - len(events)), replace=False)):
            key, row = slots[slot]
            jitter = int(rng.integers(-TUNE_MIN_GAP // 4, TUNE_MIN_GAP // 4 + 1))
            events.append(InjectedEvent(number, key, row + jitter, KINDS[len(events) % len(KINDS)],
                                        int(rng.integers(2 ** 63))))
    return events


TUNE_MIN_GAP = 240
TUNE_MAX_ROUNDS = 40


EPISODE_GAP_MS = 5 * 60_000


def alarm_episodes(flag_times_ms: np.ndarray) -> int:
    """Flags less than 5 minutes apart are one episode.

    >>> alarm_episodes(np.array([0, 60_000, 240_000, 600_000]) )  # 0-4 min one episode, 10 min another
    2
    """
    times = np.sort(flag_times_ms)
    return int(len(times) and 1 + np.count_nonzero(np.diff(times) >= EPISODE_GAP_MS))


def choose_threshold(fused: dict[str, np.ndarray], open_times: dict[str, np.ndarray], budget: float,
                     lowest: float, rule: dict[str, np.ndarray] | None = None, step: float = 0.05,
                     days: float | None = None) -> tuple[float, float]:
    """The lowest threshold (multiple of ``step``, >= ``lowest``) with at most ``budget`` episodes per symbol-day.

    Episodes count flags of the fused path or of the ``rule`` path (flags per candle, already decided).
    ``days``: symbol-days the candles span, when the arrays hold only those that can be flagged
    (default: one minute per entry of ``open_times``).
    """
    rule = rule or {key: np.zeros(len(values), dtype=bool) for key, values in fused.items()}
    days = days if days is not None else _days({key: len(times) for key, times in open_times.items()})
    top = max((float(np.nanmax(values)) for values in fused.values() if len(values)), default=lowest)
    candidates = np.round(np.arange(np.ceil(lowest / step) * step, max(top, lowest) + 2 * step, step), 4)

    def rate(threshold: float) -> float:
        return sum(alarm_episodes(open_times[key][(values >= threshold) | rule[key]])
                   for key, values in fused.items()) / days

    low, high = 0, len(candidates) - 1  # episodes fall (weakly) as the threshold rises: bisect
    while low < high:
        middle = (low + high) // 2
        if rate(candidates[middle]) <= budget:
            high = middle
        else:
            low = middle + 1
    return float(candidates[low]), rate(candidates[low])


def confidence_margins(fused: dict[str, np.ndarray], open_times: dict[str, np.ndarray], lengths: dict[str, int],
                       threshold: float, days_per_episode: dict[str, float]) -> tuple[dict, dict]:
    """``consensus.confidence`` by rarity: each level's margin above ``threshold``, and what it was measured on.

    LOW is every alarm (the false-alarm budget). A higher level starts at the lowest fused surprise at which
    the series raise at most one alarm episode per ``days_per_episode[level]`` symbol-days, pooled. ``train``
    calls it once per kind of market: a thin pair's noisier alarms set the thin levels, not the liquid ones.

    >>> minute = 60_000
    >>> times = {"A": np.arange(0, 14 * 1440) * minute}
    >>> quiet = np.zeros(14 * 1440); quiet[[100, 5000, 9000, 15000]] = [4.0, 4.5, 5.5, 6.0]  # 4 episodes in 14 days
    >>> margins, _ = confidence_margins({"A": quiet}, times, {"A": 14 * 1440}, 4.0, {"MEDIUM": 7.0, "HIGH": 14.0})
    >>> margins  # at most 2 episodes from 4.55 up (once a week), 1 from 5.55 up (once in 14 days)
    {'LOW': 0.0, 'MEDIUM': 0.55, 'HIGH': 1.55}
    """
    margins, measured = {"LOW": 0.0}, {}
    for level, days in days_per_episode.items():
        start, rate = choose_threshold(fused, open_times, 1.0 / days, threshold, days=_days(lengths))
        margins[level] = round(start - threshold, 4)
        measured[level] = (f"fused surprise {start}: {rate * days:.2f} episodes per {days:g} symbol-days on "
                           f"{len(fused)} series")
    return margins, measured


def write_params(params: ModelParams, path: Path | str) -> Path:
    """Write the model file, then the JSON (each atomically), so a watcher never sees half a file; the directory
    is made if it does not exist yet."""
    path = Path(path)
    directory = path.resolve().parent
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / params.learned.file
    write_atomically(model_path, params.model.save)
    write_atomically(path, lambda handle: handle.write((json.dumps(params.to_json(), indent=2) + "\n").encode()))
    return model_path


def _days(lengths: dict[str, int]) -> float:
    """Symbol-days of 1-minute candles."""
    return sum(lengths.values()) / (24 * 60)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))
