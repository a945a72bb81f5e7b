"""Evaluation: recall on injected anomalies and false alarms on untouched candles, against a naive baseline.

Protocol (held out, so the model is not tested on what it was fitted on):

1. each series is split in time: the first ``train_fraction`` trains the model
   (``training.train``), the rest is the held-out part;
2. false alarms: the untouched series is scored from its start (the training part only
   warms the state, as seeding a live stream would) and the flags in the held-out part
   are grouped into episodes (flags less than ``training.EPISODE_GAP_MS`` apart are one);
3. recall: labelled events are injected into the held-out parts only, in rounds (events
   at least ``MIN_GAP`` candles apart), each round scored afresh; an event counts as
   detected when a candle opening less than ``training.DETECTION_WINDOW`` minutes after its
   start is flagged, i.e. the decision exists within 5 minutes. The delay is minutes from
   the event's start to the close of the first flagged candle.

Nothing is tuned on the held-out part: ``train`` sees only the training part (the model,
every detector's calibration table, the fusion offsets, tuned on events injected into the
training candles, and the alarm threshold, chosen for a false-alarm budget on the
untouched training candles). To compare parameter
choices (windows, groups, the budget) use ``development=True``
(``market-anomaly evaluate --development``): the same protocol run *inside* the training
part (its first ``train_fraction`` trains, the rest of it tests), so the held-out part stays
untouched until the final report.

The report also gives the *operating curve*: recall and held-out false alarms at fused-surprise
thresholds around the trained one (``CURVE_STEPS``), so an analyst sees what a different
``consensus.false_alarm_budget`` would buy or cost before retraining with it. The
leave-one-series-out report has it too (offsets from each fold's own threshold), for all series
and per kind of market (``ConsensusParams.market_kind``: liquid, or thin with most closes unmoved: 0.58-0.91 of
them on the thin BTC pairs of ../shared/data/pumps-2020, 0.00-0.18 on the liquid spot and futures series).

The baseline is the naive detector users start with: z-scores of the return and of the
volume against the previous 60 candles' mean and standard deviation, flag at 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from market_anomaly.core.detectors import warmups
from market_anomaly.core.params import CONFIDENCE_LEVELS, CONFIDENCE_RANKS as RANKS, MARKETS
from market_anomaly.training.injection import KINDS, MAGNITUDE_RANGES, inject_random, injection_slots
from market_anomaly.training.train import (DETECTION_WINDOW, EPISODE_GAP_MS, KNOWN_EVENT_MINUTES, TrainConfig,
                                               alarm_episodes, outside_known_event, score_series, train)

MIN_GAP = 240
BASELINE_WINDOW = 60
BASELINE_THRESHOLD = 3.0
MINUTE_MS = 60_000
CURVE_STEPS = np.round(np.arange(-1.5, 0.51, 0.1), 2)  # operating curve: offsets from the trained threshold
CONFIDENCE_RARITY = (("MEDIUM", "week", 7), ("HIGH", "month", 30))  # level, and the period it should be rare in


def baseline_flags(candles: pd.DataFrame) -> np.ndarray:
    """The naive detector: |z| of return or z of volume > 3 against the previous 60 candles.

    >>> closes = pd.Series(100 + 0.1 * np.sin(np.arange(80)))
    >>> flags = baseline_flags(pd.DataFrame({"close": closes.where(closes.index != 70, 103.0), "volume": 1.0}))
    >>> np.flatnonzero(flags).tolist()
    [70, 71]
    """
    returns = candles["close"].pct_change()
    volume = candles["volume"]

    def zscore(values: pd.Series) -> pd.Series:
        previous = values.shift(1).rolling(BASELINE_WINDOW)
        return (values - previous.mean()) / previous.std()

    return ((zscore(returns).abs() > BASELINE_THRESHOLD) | (zscore(volume) > BASELINE_THRESHOLD)).to_numpy()


def evaluate(series: dict[str, pd.DataFrame], injections: int = 200, seed: int = 0, train_fraction: float = 0.5,
             base: dict | None = None, development: bool = False) -> dict:
    """The evaluation report (see the module docstring) as a JSON-ready dict.

    ``development``: evaluate inside the training part only (for choosing parameters).
    """
    if development:
        series = {key: frame.sort_values("open_time", kind="stable").iloc[:int(len(frame) * train_fraction)]
                  .reset_index(drop=True) for key, frame in series.items()}
    splits = {key: int(len(frame) * train_fraction) for key, frame in series.items()}
    params = train({key: frame.iloc[:splits[key]] for key, frame in series.items()}, TrainConfig(base=base))
    held_out_days = {key: (len(frame) - splits[key]) / (24 * 60) for key, frame in series.items()}

    untouched = score_series(params, series)
    thresholds = params.consensus.threshold + CURVE_STEPS
    false_alarms, curve_episodes = {}, np.zeros(len(thresholds))
    for key, frame in series.items():
        held_out = slice(splits[key], None)
        times = frame["open_time"].to_numpy()[held_out]
        curve_episodes += _curve_episodes(times, _alarm_surprise(untouched[key], params)[held_out], thresholds)
        false_alarms[key] = {
            "held_out_days": round(held_out_days[key], 2),
            "episodes": alarm_episodes(times[untouched[key]["is_anomaly"].to_numpy()[held_out]]),
            "baseline_episodes": alarm_episodes(times[baseline_flags(frame)[held_out]]),
        }

    rng = np.random.default_rng(seed)
    outcomes = []
    peaks = []  # per event: the largest fused surprise in its detection window (inf where the rule path flagged)
    per_round = max(1, len(injection_slots(series, MIN_GAP, splits)) // 2)
    remaining = injections
    while remaining > 0:
        count = min(per_round, remaining)
        injected, labels = inject_random(series, count, rng, min_gap=MIN_GAP, earliest=splits)
        decisions = score_series(params, injected)
        for label in labels:
            frame = injected[label["symbol"]]
            scored = decisions[label["symbol"]]
            outcomes.append({**label,
                             "delay": _first_flag_delay(label, frame, scored["is_anomaly"]),
                             "baseline_delay": _first_flag_delay(label, frame, baseline_flags(frame))})
            peaks.append(_alarm_surprise(scored, params)[_in_window(label, frame)].max(initial=-np.inf))
        remaining -= count
    days = sum(held_out_days.values())
    curve = [{"threshold": round(float(threshold), 2), "recall": _share(pd.Series(np.array(peaks) >= threshold)),
              "false_alarm_episodes_per_symbol_day": round(float(episodes) / days, 3)}
             for threshold, episodes in zip(thresholds, curve_episodes)]
    return {**_report(outcomes, false_alarms, days, params, train_fraction, seed, development),
            "operating_curve": curve}


def _rule_flags(decisions: pd.DataFrame, params) -> np.ndarray:
    """Flags the fused surprise does not explain (the optional rule path: ``consensus.required``/``alone``)."""
    return decisions["is_anomaly"].to_numpy(bool) & (decisions["surprise"].to_numpy() < params.consensus.threshold)


def _alarm_surprise(decisions: pd.DataFrame, params) -> np.ndarray:
    """The fused surprise a threshold is held against, infinite where the rule path flagged (any threshold does)."""
    surprise = np.nan_to_num(decisions["surprise"].to_numpy(float), nan=-np.inf)  # not scored yet: never alarms
    return np.where(_rule_flags(decisions, params), np.inf, surprise)


def _curve_episodes(times: np.ndarray, surprise: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Alarm episodes among ``times`` at each threshold of the operating curve."""
    return np.array([alarm_episodes(times[surprise >= threshold]) for threshold in thresholds])


def _first_flag_delay(label: dict, candles: pd.DataFrame, flags) -> float:
    """Minutes from the event's start to the close of its first flagged candle within the window (NaN: missed)."""
    offsets = (candles["open_time"].to_numpy() - label["open_time"]) / MINUTE_MS
    hits = offsets[np.asarray(flags, bool) & _in_window(label, candles)]
    return float(hits.min() + 1) if len(hits) else float("nan")


def _in_window(label: dict, candles: pd.DataFrame) -> np.ndarray:
    """The candles opening less than ``DETECTION_WINDOW`` minutes after the event's start."""
    offsets = candles["open_time"].to_numpy() - label["open_time"]
    return (offsets >= 0) & (offsets < DETECTION_WINDOW * MINUTE_MS)


def _report(outcomes: list[dict], false_alarms: dict, days: float, params, train_fraction: float, seed: int,
            development: bool = False) -> dict:
    frame = pd.DataFrame(outcomes)
    scope = (f"DEVELOPMENT (inside the training part only, the first {train_fraction:.0%} of each series): "
             if development else "")
    return {
        "protocol": (f"{scope}model trained on the first {train_fraction:.0%} of each series; false alarms and injected "
                     f"events only in the remaining {1 - train_fraction:.0%} (held out); detected = flagged within "
                     f"{DETECTION_WINDOW} min; episodes = flags < {EPISODE_GAP_MS // MINUTE_MS} min apart; threshold "
                     f"{params.consensus.threshold} set by train for {params.consensus.false_alarm_budget} episodes "
                     f"per symbol-day on the training candles; fusion offsets tuned on "
                     f"{params.trained_on.get('tuning', {}).get('injections', 0)} events injected into the training "
                     f"part"),
        "seed": seed,
        "threshold": params.consensus.threshold,
        "params_trained_on": params.trained_on["candles"],
        "false_alarms": false_alarms,
        **_detection_summary(frame, outcomes, false_alarms, days),
    }


def _detection_summary(frame: pd.DataFrame, outcomes: list[dict], false_alarms: dict[str, dict], days: float) -> dict:
    """What both evaluations report: recall (ours and the baseline's), pooled false-alarm rates, the missed events."""
    return {
        "recall": _recall_table(frame, "delay"),
        "baseline_recall": _recall_table(frame, "baseline_delay"),
        "false_alarm_episodes_per_symbol_day": round(sum(e["episodes"] for e in false_alarms.values()) / days, 3),
        "baseline_false_alarm_episodes_per_symbol_day": round(
            sum(e["baseline_episodes"] for e in false_alarms.values()) / days, 3),
        "missed": [{key: outcome[key] for key in ("symbol", "kind", "open_time", "magnitude")}
                   for outcome in outcomes if np.isnan(outcome["delay"])],
    }


def _recall_table(frame: pd.DataFrame, column: str) -> dict:
    """Per kind (and all): events, recall, median delay of ``column``; weaker/stronger half of the range."""
    table = {}
    for kind in KINDS + ("all",):
        rows = frame if kind == "all" else frame[frame["kind"] == kind]
        detected = rows[column].notna()
        table[kind] = {"events": int(len(rows)), "recall": _share(detected),
                       "median_delay_min": float(rows[column].median()) if detected.any() else None}
        if kind in MAGNITUDE_RANGES:  # weak events (lower half of the range) vs strong ones
            strong = rows["magnitude"] >= np.mean(MAGNITUDE_RANGES[kind])
            table[kind].update(recall_weaker_half=_share(detected[~strong]),
                               recall_stronger_half=_share(detected[strong]))
    return table


def format_report(report: dict) -> str:
    """The report as a readable table."""
    lines = [report["protocol"], "",
             f"{'kind':<18}{'events':>7}  {'recall':>7}  {'weak/strong half':>16}  {'delay(min)':>10}   "
             f"{'baseline':>8}  {'delay(min)':>10}"]
    for kind, ours in report["recall"].items():
        theirs = report["baseline_recall"][kind]
        halves = (f"{_fmt(ours['recall_weaker_half'])}/{_fmt(ours['recall_stronger_half'])}"
                  if "recall_weaker_half" in ours else "")
        lines.append(f"{kind:<18}{ours['events']:>7}  {_fmt(ours['recall']):>7}  {halves:>16}  "
                     f"{_fmt(ours['median_delay_min']):>10}   {_fmt(theirs['recall']):>8}  "
                     f"{_fmt(theirs['median_delay_min']):>10}")
    lines += ["", f"{'series':<28}{'held-out days':>14}{'episodes':>10}{'baseline':>10}"]
    for key, entry in report["false_alarms"].items():
        lines.append(f"{key:<28}{entry['held_out_days']:>14}{entry['episodes']:>10}{entry['baseline_episodes']:>10}")
    lines.append(f"false-alarm episodes per symbol-day: {report['false_alarm_episodes_per_symbol_day']} "
                 f"(baseline {report['baseline_false_alarm_episodes_per_symbol_day']})")
    if report.get("operating_curve"):
        lines += ["", "operating curve (held out): fused-surprise threshold -> recall, false-alarm episodes per "
                      "symbol-day (trained threshold marked *)"]
        for point in report["operating_curve"]:
            mark = "*" if point["threshold"] == round(report["threshold"], 2) else " "
            lines.append(f"  {mark}{point['threshold']:>6.2f}  recall {_fmt(point['recall']):>5}  "
                         f"false alarms {point['false_alarm_episodes_per_symbol_day']:.3f}")
    return "\n".join(lines)


def _share(flags: pd.Series) -> float | None:
    return round(float(flags.mean()), 4) if len(flags) else None


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


# -- leave one series out: what a pair new to the model gets ----------------------------------------

REAL_EVENT_WINDOW = (-5, 20)           # minutes around an announced time in which a flag catches the event
DAY_MINUTES = 24 * 60


def read_announced_events(path) -> dict[str, int]:
    """Symbol -> announced time (epoch ms) from a file with ``symbol`` and ``pump_time_utc_announced``
    (``YYYY-MM-DD HH.MM``, UTC), like ``../shared/data/pumps-2020/pump_events.csv``."""
    table = pd.read_csv(path)
    times = pd.to_datetime(table["pump_time_utc_announced"], format="%Y-%m-%d %H.%M", utc=True)
    return dict(zip(table["symbol"].astype(str), times.to_numpy("datetime64[ms]").astype(np.int64).tolist()))


def evaluate_leave_one_out(series: dict[str, pd.DataFrame], injections: int = 30, seed: int = 0,
                           base: dict | None = None, events: dict[str, int] | None = None,
                           tune_injections: int | None = None, max_candles: int | None = None,
                           train_candles: int | None = None) -> dict:
    """Leave-one-series-out: for each series, train on all the others and evaluate on it, scored from an empty
    state (a pair the model has never seen, from its first candle).

    Per held-out series: ``injections`` labelled events injected after the longest warm-up (in rounds, as
    ``evaluate``), recall within ``DETECTION_WINDOW`` minutes; untouched false-alarm episodes per symbol-day
    on all its candles. ``events``: symbol -> announced time (ms) of a real event (``read_announced_events``):
    its series counts as caught when a candle opening within ``REAL_EVENT_WINDOW`` minutes of it is flagged;
    the ``KNOWN_EVENT_MINUTES`` around it count neither as false alarms nor for injected events (nor, in each
    fold's training, as false alarms).
    ``max_candles``: keep only each series' first candles (quick iteration only; report full runs).
    ``train_candles``: train each fold on only the first candles of the other series (cheaper folds; the
    held-out series is still evaluated in full).
    Everything also for the naive rolling z-score (``baseline_flags``).
    """
    events = events or {}
    if max_candles:
        series = {key: frame.iloc[:max_candles].reset_index(drop=True) for key, frame in series.items()}
    known = tuple(events.items())  # a fold's training does not count the other series' real events as alarms
    config = (TrainConfig(base=base, known_events=known) if tune_injections is None
              else TrainConfig(base=base, tune_injections=tune_injections, known_events=known))
    training = ({key: frame.iloc[:train_candles].reset_index(drop=True) for key, frame in series.items()}
                if train_candles else series)
    rng = np.random.default_rng(seed)
    outcomes, per_series, real, curve_episodes, real_margins = [], {}, {}, {}, {}
    for key, frame in series.items():
        params = train({other: candles for other, candles in training.items() if other != key}, config)
        symbol = key.split("@")[0]
        times = frame["open_time"].to_numpy()
        announced = events.get(symbol)
        counted = outside_known_event(times, announced)
        decided = score_series(params, {key: frame})[key]
        flags = decided["is_anomaly"].to_numpy(bool)
        rank = confidence_ranks(decided)
        baseline = baseline_flags(frame)
        days = counted.sum() / DAY_MINUTES
        surprise = _alarm_surprise(decided, params)
        curve_episodes[key] = _curve_episodes(times[counted], surprise[counted], params.consensus.threshold + CURVE_STEPS)
        per_series[key] = {"days": round(float(days), 2),
                           "market": params.consensus.market_kind(decided["still_share"].to_numpy()),
                           "threshold": params.consensus.threshold,
                           "episodes": alarm_episodes(times[flags & counted]),
                           **{f"{level.lower()}_episodes": alarm_episodes(times[(rank >= RANKS.index(level)) & counted])
                              for level in CONFIDENCE_LEVELS[1:]},
                           "baseline_episodes": alarm_episodes(times[baseline & counted])}
        if announced is not None:
            offsets = (times - announced) / MINUTE_MS
            near = (offsets >= REAL_EVENT_WINDOW[0]) & (offsets <= REAL_EVENT_WINDOW[1])
            real_margins[key] = float(surprise[near].max(initial=-np.inf) - params.consensus.threshold)
            real[key] = {"announced": pd.Timestamp(announced, unit="ms", tz="UTC").isoformat(),
                         "first_flag_min": _first_offset(offsets, flags & near),
                         "confidence": RANKS[rank[near].max(initial=0)],
                         "baseline_first_flag_min": _first_offset(offsets, baseline & near)}
        earliest = max(warmups(params).values())
        found = _injected_outcomes(params, key, frame, injections, rng, earliest)
        if announced is not None:  # events overlapping the real one cannot be told apart from it
            found = [outcome for outcome, outside in zip(found, outside_known_event(
                np.array([outcome["open_time"] for outcome in found], dtype=np.int64), announced)) if outside]
        outcomes += found  # each labelled with its series' key as ``symbol``
        per_series[key].update(injected=len(found), recall=_share(pd.Series([not np.isnan(o["delay"])
                                                                            for o in found], dtype=bool)))
    return _loso_report(outcomes, per_series, real, curve_episodes, real_margins, seed, injections)


def _injected_outcomes(params, key: str, frame: pd.DataFrame, injections: int, rng: np.random.Generator,
                       earliest: int) -> list[dict]:
    """Outcomes (label, delay, baseline delay) of ``injections`` events injected into one series in rounds."""
    slots = injection_slots({key: frame}, MIN_GAP, earliest)
    if not slots:
        return []
    per_round, remaining, outcomes = max(1, len(slots) // 2), injections, []
    while remaining > 0:
        count = min(per_round, remaining)
        injected, labels = inject_random({key: frame}, count, rng, min_gap=MIN_GAP, earliest=earliest)
        scored = score_series(params, injected)[key]
        candles = injected[key]
        baseline = baseline_flags(candles)
        rank = confidence_ranks(scored)
        surprise = _alarm_surprise(scored, params)
        outcomes += [{**label, "delay": _first_flag_delay(label, candles, scored["is_anomaly"]),
                      "confidence": RANKS[rank[_in_window(label, candles)].max(initial=0)],
                      "margin": surprise[_in_window(label, candles)].max(initial=-np.inf) - params.consensus.threshold,
                      "baseline_delay": _first_flag_delay(label, candles, baseline)} for label in labels]
        remaining -= count
    return outcomes


def confidence_ranks(decisions: pd.DataFrame) -> np.ndarray:
    """Each decision's confidence as its place in ``RANKS`` (NONE 0, LOW 1, MEDIUM 2, HIGH 3)."""
    return pd.Categorical(decisions["confidence"], categories=RANKS).codes.astype(np.int64)


def _confidence_summary(frame: pd.DataFrame, per_series: dict, days: float) -> dict:
    """How often MEDIUM+ and HIGH fire on the untouched candles, and what the injected events reached."""
    rarity = _rarity(list(per_series.values()), days)
    reached = {}
    for kind in KINDS + ("all",):
        rows = frame if kind == "all" else frame[frame["kind"] == kind]
        reached[kind] = {level: _share(rows["confidence"].isin(RANKS[RANKS.index(level):]))
                         for level in CONFIDENCE_LEVELS}
    return {**rarity, "injected_reaching": reached}


def _rarity(entries: list[dict], days: float) -> dict:
    """MEDIUM+ episodes per symbol-week and HIGH per symbol-month over these series' untouched candles."""
    return {f"{level.lower()}_episodes_per_symbol_{period}": round(
        sum(entry[f"{level.lower()}_episodes"] for entry in entries) * length / days, 3)
        for level, period, length in CONFIDENCE_RARITY}


def _first_offset(offsets: np.ndarray, flags: np.ndarray) -> float | None:
    return float(offsets[flags].min()) if flags.any() else None


def _loso_curve(frame: pd.DataFrame, per_series: dict, curve_episodes: dict[str, np.ndarray],
                real_margins: dict[str, float]) -> list[dict]:
    """Recall and false alarms at each offset from the folds' trained thresholds, for all series and per market
    kind, and the share of the real events caught: what a different budget would buy on a pair new to the model."""
    points = [{"offset": float(step)} for step in CURVE_STEPS]
    if real_margins:  # each real event's largest surprise near it, above its fold's threshold
        margins = np.array(list(real_margins.values()))
        for point, step in zip(points, CURVE_STEPS):
            point["real_events_caught"] = _share(pd.Series(margins >= step - 1e-9))
    for market in ("all",) + MARKETS:
        keys = [key for key, entry in per_series.items() if market in ("all", entry["market"])]
        if not keys:
            continue
        margins = frame.loc[frame["symbol"].isin(keys), "margin"].to_numpy(float) if len(frame) else np.array([])
        days = sum(per_series[key]["days"] for key in keys)
        episodes = np.array([curve_episodes[key] for key in keys])  # series x offsets
        series_days = np.array([[per_series[key]["days"] or np.inf] for key in keys])
        above = np.sum(np.round(episodes / series_days, 3) > 1.0, axis=0)  # as ``series_above_1_per_day``
        for point, step, count, noisy in zip(points, CURVE_STEPS, episodes.sum(axis=0), above):
            point[market] = {"recall": _share(pd.Series(margins >= step - 1e-9)),
                             "false_alarm_episodes_per_symbol_day": round(float(count) / days, 3) if days else None,
                             "series_above_1_per_day": int(noisy)}
    return points


def _by_market(frame: pd.DataFrame, per_series: dict) -> dict:
    """The headline figures per market kind (liquid series, thin pairs): where the misses and the alarms are."""
    table = {}
    for market in MARKETS:
        keys = [key for key, entry in per_series.items() if entry["market"] == market]
        if not keys:
            continue
        rows = frame[frame["symbol"].isin(keys)] if len(frame) else frame
        days = sum(per_series[key]["days"] for key in keys)
        table[market] = {
            "series": len(keys),
            "recall": {kind: _share((rows if kind == "all" else rows[rows["kind"] == kind])["delay"].notna())
                       for kind in KINDS + ("all",)} if len(rows) else {},
            "false_alarm_episodes_per_symbol_day": round(sum(per_series[key]["episodes"] for key in keys) / days, 3)
            if days else None,
            "series_above_1_per_day": sum(1 for key in keys if (per_series[key]["per_symbol_day"] or 0) > 1.0),
            **(_rarity([per_series[key] for key in keys], days) if days else {}),
        }
    return table


def _loso_report(outcomes: list[dict], per_series: dict, real: dict, curve_episodes: dict[str, np.ndarray],
                 real_margins: dict[str, float], seed: int, injections: int) -> dict:
    frame = pd.DataFrame(outcomes)
    days = sum(entry["days"] for entry in per_series.values())
    for entry in per_series.values():
        entry["per_symbol_day"] = round(entry["episodes"] / entry["days"], 3) if entry["days"] else None
        entry["baseline_per_symbol_day"] = round(entry["baseline_episodes"] / entry["days"], 3) if entry["days"] \
            else None
    real_days = sum(per_series[key]["days"] for key in real)
    report = {
        "protocol": (f"leave one series out: each series scored from an empty state by a model trained on all the "
                     f"other series; {injections} events injected per series after the warm-up; detected = flagged "
                     f"within {DETECTION_WINDOW} min; false alarms = episodes (flags < "
                     f"{EPISODE_GAP_MS // MINUTE_MS} min apart) on the untouched candles, outside "
                     f"[{KNOWN_EVENT_MINUTES[0]}, +{KNOWN_EVENT_MINUTES[1]}] min of an announced real event; a real "
                     f"event is caught when flagged within [{REAL_EVENT_WINDOW[0]}, +{REAL_EVENT_WINDOW[1]}] min"),
        "seed": seed,
        "series": per_series,
        **_detection_summary(frame, outcomes, per_series, days),
        "confidence": _confidence_summary(frame, per_series, days),
        "series_above_1_per_day": sorted(key for key, e in per_series.items() if (e["per_symbol_day"] or 0) > 1.0),
        "by_market": _by_market(frame, per_series),
        "operating_curve": _loso_curve(frame, per_series, curve_episodes, real_margins),
    }
    if real:
        report["real_events"] = {
            "events": real,
            "caught": _share(pd.Series([entry["first_flag_min"] is not None for entry in real.values()])),
            "baseline_caught": _share(pd.Series([entry["baseline_first_flag_min"] is not None
                                                 for entry in real.values()])),
            "false_alarm_episodes_per_symbol_day": round(sum(per_series[k]["episodes"] for k in real) / real_days, 3),
            "baseline_false_alarm_episodes_per_symbol_day": round(
                sum(per_series[k]["baseline_episodes"] for k in real) / real_days, 3),
        }
    return report


def format_leave_one_out(report: dict) -> str:
    """The leave-one-series-out report as a readable table."""
    lines = [report["protocol"], "", f"{'kind':<18}{'events':>7}  {'recall':>7}  {'delay(min)':>10}   "
                                     f"{'baseline':>8}  {'delay(min)':>10}"]
    for kind, ours in report["recall"].items():
        theirs = report["baseline_recall"][kind]
        lines.append(f"{kind:<18}{ours['events']:>7}  {_fmt(ours['recall']):>7}  {_fmt(ours['median_delay_min']):>10}"
                     f"   {_fmt(theirs['recall']):>8}  {_fmt(theirs['median_delay_min']):>10}")
    lines += ["", f"{'series':<30}{'market':>7}{'days':>6}{'thr':>6}{'recall':>8}{'FA/day':>8}{'baseline':>9}"]
    for key, entry in report["series"].items():
        lines.append(f"{key:<30}{entry['market']:>7}{entry['days']:>6}{entry['threshold']:>6}{_fmt(entry['recall']):>8}"
                     f"{_fmt(entry['per_symbol_day']):>8}{_fmt(entry['baseline_per_symbol_day']):>9}")
    lines.append(f"false-alarm episodes per symbol-day, pooled: {report['false_alarm_episodes_per_symbol_day']} "
                 f"(baseline {report['baseline_false_alarm_episodes_per_symbol_day']}); series above 1.0: "
                 f"{', '.join(report['series_above_1_per_day']) or 'none'}")
    for market, entry in report["by_market"].items():
        recall = entry["recall"]
        lines.append(f"{market} series ({entry['series']}): recall {_fmt(recall.get('all'))} ("
                     + ", ".join(f"{kind} {_fmt(recall[kind])}" for kind in KINDS if kind in recall)
                     + f"), false-alarm episodes per symbol-day {_fmt(entry['false_alarm_episodes_per_symbol_day'])}, "
                     f"{entry['series_above_1_per_day']} series above 1.0; MEDIUM+ per symbol-week "
                     f"{_fmt(entry.get('medium_episodes_per_symbol_week'))}, HIGH per symbol-month "
                     f"{_fmt(entry.get('high_episodes_per_symbol_month'))}")
    confidence = report["confidence"]
    lines.append(f"untouched candles: MEDIUM+ episodes per symbol-week {confidence['medium_episodes_per_symbol_week']}, "
                 f"HIGH per symbol-month {confidence['high_episodes_per_symbol_month']}")
    lines += ["", f"{'injected events reaching':<26}{'LOW+':>7}{'MEDIUM+':>9}{'HIGH':>7}"]
    for kind, shares in confidence["injected_reaching"].items():
        lines.append(f"{kind:<26}" + "".join(f"{_fmt(shares[level]):>{width}}"
                                              for level, width in zip(CONFIDENCE_LEVELS, (7, 9, 7))))
    if "real_events" in report:
        real = report["real_events"]
        lines += ["", f"{'real event':<30}{'announced':>27}{'first flag':>12}{'confidence':>12}{'baseline':>10}"]
        for key, entry in real["events"].items():
            lines.append(f"{key:<30}{entry['announced']:>27}{_fmt(entry['first_flag_min']):>12}"
                         f"{entry['confidence']:>12}{_fmt(entry['baseline_first_flag_min']):>10}")
        lines.append(f"caught {real['caught']} (baseline {real['baseline_caught']}); false-alarm episodes per "
                     f"symbol-day on these series away from the event: {real['false_alarm_episodes_per_symbol_day']} "
                     f"(baseline {real['baseline_false_alarm_episodes_per_symbol_day']})")
    markets = [market for market in ("all",) + MARKETS if market in report["operating_curve"][0]]
    real_events = "real_events_caught" in report["operating_curve"][0]
    lines += ["", "operating curve (held out): offset from each fold's trained threshold -> recall / false-alarm "
                  "episodes per symbol-day (series above 1.0 a day) for " + ", ".join(markets) + ("; real events caught" if real_events
                                                                             else "") + "; trained threshold *"]
    for point in report["operating_curve"]:
        lines.append(f"  {'*' if point['offset'] == 0 else ' '}{point['offset']:>+5.1f}  " + "   ".join(
            f"{_fmt(point[market]['recall']):>5} / {_fmt(point[market]['false_alarm_episodes_per_symbol_day']):>6}"
            f" ({point[market]['series_above_1_per_day']:>2} > 1)" for market in markets) + (f"   {_fmt(point['real_events_caught']):>5}" if real_events else ""))
    return "\n".join(lines)
