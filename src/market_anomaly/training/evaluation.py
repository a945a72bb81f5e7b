"""Evaluation, leave one series out: what a pair new to the model gets, next to a naive baseline.

Protocol (``evaluate``): for every series in turn, ``training.train`` fits the model on *all
the other series* (the learned model, every detector's calibration, the fusion offsets tuned on
events injected into those training candles, the self-calibration's pooled histogram, the
threshold and the confidence levels); the series left out is then scored from a fresh state.
Its first ``SEED_CANDLES`` only warm the state, as a live stream's REST seed does; every figure
counts the candles after them. Three blocks, per series and pooled:

1. **injected**: labelled events of every kind (``injection``) are injected into the left-out
   series (``injections`` in all, shared out by the room each series has), in rounds of events
   at least ``MIN_GAP`` candles apart, each round scored afresh; an event counts as detected when
   a candle opening less than ``training.DETECTION_WINDOW`` minutes after its start is flagged.
   The delay is minutes from the event's start to the close of the first flagged candle.
2. **untouched**: alarm episodes (flags less than ``training.EPISODE_GAP_MS`` apart are one) per
   symbol-day on the left-out series as it is, at every confidence level (LOW is every alarm);
   where the series has labelled real events, the candles in ``QUIET_WINDOW`` around them do not
   count (they are not ordinary minutes).
3. **labelled real events** (``events``: symbol and announced time, e.g. the 2020 pump-and-dumps):
   an event is flagged when a candle opening within ``EVENT_WINDOW`` minutes of its time is;
   false-alarm episodes per symbol-day outside ``QUIET_WINDOW`` on those series.

The *operating curve* gives injected recall, untouched false alarms and the real events' figures
at fused-surprise thresholds ``CURVE_STEPS`` away from each fold's trained one, so an analyst sees
what another ``consensus.false_alarm_budget`` would buy or cost.

Nothing is tuned on the series left out. To compare parameter choices without looking at the
final figures, use ``development=True`` (``market-anomaly evaluate --development``): the same
protocol on the first ``DEVELOPMENT_SHARE`` of every series only.

The baseline is the naive detector users start with: z-scores of the return and of the volume
against the previous 60 candles' mean and standard deviation, flag at 3.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from market_anomaly.core.params import CONFIDENCE_LEVELS
from market_anomaly.training.injection import KINDS, MAGNITUDE_RANGES, inject_random, injection_slots
from market_anomaly.training.train import (DETECTION_WINDOW, EPISODE_GAP_MS, alarm_episodes,
                                           score_series, train)

log = logging.getLogger("market_anomaly.evaluate")

MIN_GAP = 240
SEED_CANDLES = 1000  # a live stream's seed (produce --seed-history): warms the state, never counted
EVENT_WINDOW = (-5, 20)     # minutes around a labelled event's time in which a flag catches it
QUIET_WINDOW = (-60, 180)   # minutes around it that are not ordinary (false alarms count outside)
DEVELOPMENT_SHARE = 0.5
BASELINE_WINDOW = 60
BASELINE_THRESHOLD = 3.0
MINUTE_MS = 60_000
CURVE_STEPS = np.round(np.arange(-0.5, 0.51, 0.1), 2)  # operating curve: offsets from each fold's threshold


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


def read_events(path: Path | str) -> pd.DataFrame:
    """Labelled real events from a CSV: a ``symbol`` column and a time column (the first whose name contains
    ``time``): ISO, epoch milliseconds or ``YYYY-MM-DD HH.MM`` (UTC). Returns ``symbol``, ``time_ms``.

    >>> import io
    >>> read_events(io.StringIO("symbol,pump_time_utc_announced\\nAPPCBTC,2020-11-18 18.00\\n")).to_dict("records")
    [{'symbol': 'APPCBTC', 'time_ms': 1605722400000}]
    """
    frame = pd.read_csv(path)
    columns = [name for name in frame.columns if "time" in name.lower()]
    if "symbol" not in frame.columns or not columns:
        raise ValueError(f"{path}: an events file needs a symbol column and a time column")
    values = frame[columns[0]]
    if pd.api.types.is_numeric_dtype(values):
        times = values.astype("int64")
    else:
        text = values.astype(str).str.strip().str.replace(r"^(\d{4}-\d\d-\d\d \d\d)\.(\d\d)$", r"\1:\2", regex=True)
        times = pd.to_datetime(text, utc=True, format="ISO8601").astype("int64") // 1_000_000
    return pd.DataFrame({"symbol": frame["symbol"].astype(str), "time_ms": times.astype("int64")})


def evaluate(series: dict[str, pd.DataFrame], injections: int = 500, seed: int = 0, base: dict | None = None,
             events: pd.DataFrame | None = None, development: bool = False,
             tune_injections: int | None = None) -> dict:
    """The evaluation report (see the module docstring) as a JSON-ready dict.

    ``series``: frames by key (``candle_files.series_by_symbol``), at least two. ``events``: labelled real
    events (``read_events``). ``tune_injections``: for each fold's ``train`` (default: train's).
    """
    if len(series) < 2:
        raise ValueError("leave-one-series-out evaluation needs at least two series")
    series = {key: frame.sort_values("open_time", kind="stable").reset_index(drop=True)
              for key, frame in series.items()}
    if development:
        series = {key: frame.iloc[:int(len(frame) * DEVELOPMENT_SHARE)].reset_index(drop=True)
                  for key, frame in series.items()}
    events = events if events is not None else pd.DataFrame({"symbol": [], "time_ms": []})
    quota = _share_out(injections, {key: len(injection_slots({key: frame}, MIN_GAP, SEED_CANDLES))
                                    for key, frame in series.items()})
    tuning = {} if tune_injections is None else {"tune_injections": tune_injections}
    folds, started = {}, time.perf_counter()
    for number, (key, frame) in enumerate(series.items()):
        params = train({other: candles for other, candles in series.items() if other != key}, base=base, **tuning)
        own_events = events["time_ms"].to_numpy(np.int64)[events["symbol"].to_numpy() == key.split("@")[0]]
        folds[key] = _fold(key, frame, params, own_events, quota[key], np.random.default_rng([seed, number]))
        untouched = folds[key]["untouched"]
        log.info("fold %d/%d %s: threshold %.2f, %d alarm episodes in %.1f untouched days, %d events injected "
                 "(%.0fs so far)", number + 1, len(series), key, params.consensus.threshold,
                 untouched["episodes"]["LOW"], untouched["days"], quota[key], time.perf_counter() - started)
    return _report(folds, seed, development, events)


def _share_out(total: int, room: dict[str, int]) -> dict[str, int]:
    """``total`` events shared out in proportion to ``room`` (largest remainders), never more than a series holds.

    >>> _share_out(5, {"a": 30, "b": 10, "c": 0})
    {'a': 4, 'b': 1, 'c': 0}
    """
    size = sum(room.values())
    if not size:
        return {key: 0 for key in room}
    exact = {key: total * slots / size for key, slots in room.items()}
    shares = {key: int(value) for key, value in exact.items()}
    for key in sorted(exact, key=lambda key: shares[key] - exact[key])[:total - sum(shares.values())]:
        shares[key] += 1
    return shares


def _fold(key: str, frame: pd.DataFrame, params, event_times: np.ndarray, injections: int,
          rng: np.random.Generator) -> dict:
    """One left-out series: its three blocks' raw counts and, per event, the peak fused surprise."""
    threshold = params.consensus.threshold
    times = frame["open_time"].to_numpy(np.int64)
    counted = np.arange(len(frame)) >= SEED_CANDLES
    near_event = np.zeros(len(frame), dtype=bool)
    for time_ms in event_times:
        near_event |= (times >= time_ms + QUIET_WINDOW[0] * MINUTE_MS) & (times <= time_ms + QUIET_WINDOW[1] * MINUTE_MS)
    quiet = counted & ~near_event
    decisions = score_series(params, {key: frame})[key]
    fused = decisions["surprise"].to_numpy()
    flags = decisions["is_anomaly"].to_numpy(bool)
    confidence = decisions["confidence"].to_numpy(object)
    baseline = baseline_flags(frame)
    untouched = {
        "days": round(float(quiet.sum()) / (24 * 60), 3),
        "episodes": {level: alarm_episodes(times[quiet & flags & _at_least(confidence, level)])
                     for level in CONFIDENCE_LEVELS},
        "baseline_episodes": alarm_episodes(times[quiet & baseline]),
        "curve_episodes": [alarm_episodes(times[quiet & (fused >= threshold + step)]) for step in CURVE_STEPS],
    }
    real = []
    for time_ms in event_times:
        window = (times >= time_ms + EVENT_WINDOW[0] * MINUTE_MS) & (times <= time_ms + EVENT_WINDOW[1] * MINUTE_MS)
        hits = (times[window & flags] - time_ms) / MINUTE_MS
        real.append({"symbol": key, "time_ms": int(time_ms), "flagged": bool(len(hits)),
                     "delay_min": float(hits.min() + 1) if len(hits) else None,
                     "confidence": _strongest(confidence[window & flags]),
                     "peak_surprise": round(float(fused[window].max(initial=-np.inf)), 3),
                     "baseline_flagged": bool((window & baseline).any())})

    injected = []
    slots = len(injection_slots({key: frame}, MIN_GAP, SEED_CANDLES))
    remaining = injections
    while remaining > 0:
        count = min(max(1, slots // 2), remaining)
        changed, labels = inject_random({key: frame}, count, rng, min_gap=MIN_GAP, earliest=SEED_CANDLES)
        candles = changed[key]
        scored = score_series(params, {key: candles})[key]
        scored_fused = scored["surprise"].to_numpy()
        for label in labels:
            injected.append({**label,
                             "delay": _first_flag_delay(label, candles, scored["is_anomaly"]),
                             "baseline_delay": _first_flag_delay(label, candles, baseline_flags(candles)),
                             "peak_step": float(scored_fused[_in_window(label, candles)].max(initial=-np.inf)
                                                - threshold)})
        remaining -= count
    return {"threshold": threshold, "trained_on": params.trained_on["candles"], "untouched": untouched,
            "real": real, "injected": injected}


def _at_least(confidence: np.ndarray, level: str) -> np.ndarray:
    return np.isin(confidence, CONFIDENCE_LEVELS[CONFIDENCE_LEVELS.index(level):])


def _strongest(levels: np.ndarray) -> str:
    return max(levels, key=CONFIDENCE_LEVELS.index, default="NONE")


def _first_flag_delay(label: dict, candles: pd.DataFrame, flags) -> float:
    """Minutes from the event's start to the close of its first flagged candle within the window (NaN: missed)."""
    offsets = (candles["open_time"].to_numpy() - label["open_time"]) / MINUTE_MS
    hits = offsets[np.asarray(flags, bool) & _in_window(label, candles)]
    return float(hits.min() + 1) if len(hits) else float("nan")


def _in_window(label: dict, candles: pd.DataFrame) -> np.ndarray:
    """The candles opening less than ``DETECTION_WINDOW`` minutes after the event's start."""
    offsets = candles["open_time"].to_numpy() - label["open_time"]
    return (offsets >= 0) & (offsets < DETECTION_WINDOW * MINUTE_MS)


def _report(folds: dict[str, dict], seed: int, development: bool, events: pd.DataFrame) -> dict:
    injected = pd.DataFrame([{**outcome, "series": key} for key, fold in folds.items() for outcome in fold["injected"]],
                            columns=["series", "symbol", "kind", "open_time", "magnitude", "delay", "baseline_delay",
                                     "peak_step"])
    real = [event for fold in folds.values() for event in fold["real"]]
    labelled = {key for key, fold in folds.items() if fold["real"]}
    days = sum(fold["untouched"]["days"] for fold in folds.values())
    labelled_days = sum(folds[key]["untouched"]["days"] for key in labelled)

    def per_day(episodes: float, span: float) -> float | None:
        return round(episodes / span, 3) if span else None

    untouched = {key: {"days": fold["untouched"]["days"],
                       **{f"{level.lower()}_per_day": per_day(fold["untouched"]["episodes"][level],
                                                             fold["untouched"]["days"]) for level in CONFIDENCE_LEVELS},
                       "baseline_per_day": per_day(fold["untouched"]["baseline_episodes"], fold["untouched"]["days"])}
                 for key, fold in folds.items()}
    pooled = {f"{level.lower()}_per_day": per_day(sum(fold["untouched"]["episodes"][level] for fold in folds.values()),
                                                 days) for level in CONFIDENCE_LEVELS}
    pooled["baseline_per_day"] = per_day(sum(fold["untouched"]["baseline_episodes"] for fold in folds.values()), days)

    curve = []
    peaks = injected["peak_step"].to_numpy()
    for index, step in enumerate(CURVE_STEPS):
        point = {"step": float(step) + 0.0,  # never -0.0
                 "recall": _share(pd.Series(peaks >= step)) if len(peaks) else None,
                 "false_alarm_episodes_per_symbol_day": per_day(
                     sum(fold["untouched"]["curve_episodes"][index] for fold in folds.values()), days)}
        if real:
            point["real_events_flagged"] = _share(pd.Series([event["peak_surprise"] >= folds[event["symbol"]]["threshold"]
                                                             + step for event in real]))
            point["real_events_false_alarms_per_symbol_day"] = per_day(
                sum(folds[key]["untouched"]["curve_episodes"][index] for key in labelled), labelled_days)
        curve.append(point)

    scope = f"DEVELOPMENT (first {DEVELOPMENT_SHARE:.0%} of every series only): " if development else ""
    return {
        "protocol": (f"{scope}leave one series out: each series is scored by a model trained on all the other "
                     f"series; its first {SEED_CANDLES} candles only warm the state (a live seed); detected = "
                     f"flagged within {DETECTION_WINDOW} min of an injected event's start; episodes = flags < "
                     f"{EPISODE_GAP_MS // MINUTE_MS} min apart; labelled real events: flagged within "
                     f"[{EVENT_WINDOW[0]:+d}, {EVENT_WINDOW[1]:+d}] min, false alarms outside "
                     f"[{QUIET_WINDOW[0]:+d}, {QUIET_WINDOW[1]:+d}] min"),
        "seed": seed,
        "folds": {key: {"threshold": fold["threshold"], "trained_on_candles": fold["trained_on"]}
                  for key, fold in folds.items()},
        "recall": _recall_table(injected, "delay"),
        "baseline_recall": _recall_table(injected, "baseline_delay"),
        "recall_by_series": {key: {"events": int(len(rows)), "recall": _share(rows["delay"].notna()),
                                   "baseline_recall": _share(rows["baseline_delay"].notna())}
                             for key, rows in injected.groupby("series", sort=False)},
        "false_alarms": untouched,
        "false_alarms_pooled": pooled,
        "real_events": {
            "events": real,
            "flagged": _share(pd.Series([event["flagged"] for event in real])) if real else None,
            "baseline_flagged": _share(pd.Series([event["baseline_flagged"] for event in real])) if real else None,
            "false_alarm_episodes_per_symbol_day": per_day(
                sum(folds[key]["untouched"]["episodes"]["LOW"] for key in labelled), labelled_days),
            "baseline_false_alarm_episodes_per_symbol_day": per_day(
                sum(folds[key]["untouched"]["baseline_episodes"] for key in labelled), labelled_days),
            "series": sorted(labelled),
            "unmatched_symbols": sorted(set(events["symbol"]) - {key.split("@")[0] for key in folds}),
        },
        "operating_curve": curve,
        "missed": [{name: row[name] for name in ("series", "kind", "open_time", "magnitude")}
                   for row in injected[injected["delay"].isna()].to_dict("records")],
    }


def _recall_table(injected: pd.DataFrame, column: str) -> dict:
    table = {}
    for kind in KINDS + ("all",):
        rows = injected if kind == "all" else injected[injected["kind"] == kind]
        detected = rows[column].notna()
        table[kind] = {"events": int(len(rows)), "recall": _share(detected),
                       "median_delay_min": float(rows[column].median()) if detected.any() else None}
        if kind in MAGNITUDE_RANGES:  # weak events (lower half of the range) vs strong ones
            strong = rows["magnitude"] >= np.mean(MAGNITUDE_RANGES[kind])
            table[kind].update(recall_weaker_half=_share(detected[~strong]), recall_stronger_half=_share(detected[strong]))
    return table


def format_report(report: dict) -> str:
    """The report as readable tables: injected, untouched, labelled real events, operating curve."""
    lines = [report["protocol"], "", "1. injected events (pooled over the left-out series)",
             f"{'kind':<18}{'events':>7}  {'recall':>7}  {'weak/strong half':>16}  {'delay(min)':>10}   "
             f"{'baseline':>8}  {'delay(min)':>10}"]
    for kind, ours in report["recall"].items():
        theirs = report["baseline_recall"][kind]
        halves = (f"{_fmt(ours['recall_weaker_half'])}/{_fmt(ours['recall_stronger_half'])}"
                  if "recall_weaker_half" in ours else "")
        lines.append(f"{kind:<18}{ours['events']:>7}  {_fmt(ours['recall']):>7}  {halves:>16}  "
                     f"{_fmt(ours['median_delay_min']):>10}   {_fmt(theirs['recall']):>8}  "
                     f"{_fmt(theirs['median_delay_min']):>10}")
    lines += ["", "2. untouched candles: alarm episodes per symbol-day (at or above each confidence level)",
              f"{'series':<30}{'days':>7}{'events':>7}{'recall':>7}{'LOW':>8}{'MEDIUM':>8}{'HIGH':>8}{'baseline':>10}"]
    recall_by_series = report["recall_by_series"]
    for key, entry in report["false_alarms"].items():
        injected = recall_by_series.get(key, {"events": 0, "recall": None})
        lines.append(f"{key:<30}{entry['days']:>7.2f}{injected['events']:>7}{_fmt(injected['recall']):>7}"
                     f"{_fmt(entry['low_per_day']):>8}{_fmt(entry['medium_per_day']):>8}"
                     f"{_fmt(entry['high_per_day']):>8}{_fmt(entry['baseline_per_day']):>10}")
    pooled = report["false_alarms_pooled"]
    lines.append(f"{'pooled':<30}{sum(e['days'] for e in report['false_alarms'].values()):>7.1f}{'':>14}"
                 f"{_fmt(pooled['low_per_day']):>8}{_fmt(pooled['medium_per_day']):>8}{_fmt(pooled['high_per_day']):>8}"
                 f"{_fmt(pooled['baseline_per_day']):>10}")
    real = report["real_events"]
    if real["events"]:
        lines += ["", "3. labelled real events", f"{'symbol':<14}{'time (UTC)':<18}{'flagged':>8}{'delay':>7}"
                                                   f"{'confidence':>11}{'peak':>7}{'baseline':>9}"]
        for event in real["events"]:
            when = pd.Timestamp(event["time_ms"], unit="ms").strftime("%Y-%m-%d %H:%M")
            lines.append(f"{event['symbol']:<14}{when:<18}{'yes' if event['flagged'] else 'NO':>8}"
                         f"{_fmt(event['delay_min']):>7}{event['confidence']:>11}{event['peak_surprise']:>7.2f}"
                         f"{'yes' if event['baseline_flagged'] else 'no':>9}")
        lines.append(f"flagged {_fmt(real['flagged'])} (baseline {_fmt(real['baseline_flagged'])}); false-alarm "
                     f"episodes per symbol-day outside the events: {_fmt(real['false_alarm_episodes_per_symbol_day'])} "
                     f"(baseline {_fmt(real['baseline_false_alarm_episodes_per_symbol_day'])})")
        if real["unmatched_symbols"]:
            lines.append(f"events without a series: {', '.join(real['unmatched_symbols'])}")
    lines += ["", "operating curve: each fold's trained threshold + step -> injected recall, untouched false alarms"
                  + (", real events flagged, their series' false alarms" if real["events"] else "")]
    for point in report["operating_curve"]:
        extra = (f"  real {_fmt(point['real_events_flagged'])} at {_fmt(point['real_events_false_alarms_per_symbol_day'])}"
                 if "real_events_flagged" in point else "")
        lines.append(f"  {'*' if point['step'] == 0 else ' '}{point['step']:+5.1f}  recall {_fmt(point['recall']):>5}  "
                     f"false alarms {_fmt(point['false_alarm_episodes_per_symbol_day']):>6}{extra}")
    return "\n".join(lines)


def _share(flags: pd.Series) -> float | None:
    return round(float(flags.mean()), 4) if len(flags) else None


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
