"""Every registered detector through the same checks (in the spirit of River's estimator checks).

A detector added to ``core.detectors.DETECTORS`` is checked here without a line of its own:
its identity is complete and unique, its docstring has a runnable example, its scores are
the same whatever the chunking and however many symbols share a call (its state going
through the real codec between calls), its state round-trips, and it is silent in warm-up.
"""

from __future__ import annotations

import doctest
import json
import inspect
from dataclasses import fields

import numpy as np
import pytest

from market_anomaly.core.baselines import Baselines
from market_anomaly.core.detectors import DETECTORS, Detector, default_groups, sections
from market_anomaly.core.features import CandleFeatures, Segments, candle_features
from market_anomaly.core.learned import MinorComponents
from market_anomaly.core.params import DEFAULTS, SECTIONS, model_file, params_from_dict
from market_anomaly.core.state import BucketState, pack, symbol_states, unpack
from market_anomaly.training.injection import KINDS, inject
from support import REPOSITORY, market


def contract_params():
    """The committed, trained parameters (the learned model scores too); a section the file predates (a detector
    just added) from ``DEFAULTS``."""
    path = REPOSITORY / "model_params.json"
    document = {**DEFAULTS, **json.loads(path.read_text())}
    return params_from_dict(document, path, MinorComponents.load(model_file(path, params_from_dict(document, path))))


PARAMS = contract_params()
LENGTH = 1500  # past every default warm-up (the longest, volatility's, is 780)
BASELINE_PREFIXES = ("engine", *{name.split(".")[0] for name in Baselines(PARAMS).state()})


def series(seed: int) -> CandleFeatures:
    """A synthetic symbol with one injected event of every kind, as features (they need only the candle before)."""
    candles = market(LENGTH, seed=seed, symbol=f"S{seed}USDT")
    for number, kind in enumerate(KINDS):
        candles, _ = inject(candles, kind, 400 + 220 * number, np.random.default_rng(seed + number))
    return candle_features(candles, Segments.one(LENGTH), np.array([-1]), np.array([np.nan]), np.array([np.nan]),
                           PARAMS.interval_ms, PARAMS.range.floor_pct)


SERIES = [series(seed) for seed in range(3)]


def part(features: CandleFeatures, start: int, end: int) -> CandleFeatures:
    return CandleFeatures(**{f.name: getattr(features, f.name)[start:end] for f in fields(CandleFeatures)})


def joined(parts: list[CandleFeatures]) -> CandleFeatures:
    return CandleFeatures(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(CandleFeatures)})


class Stream:
    """Symbols' states between calls, each call as the engine makes it: restore, context, score, learn, state,
    and the state through ``pack``/``unpack``."""

    def __init__(self, detector: type[Detector], symbols: int):
        self.detector, self.memories, self.seen = detector, [{} for _ in range(symbols)], np.zeros(symbols, int)

    def call(self, pieces: dict[int, CandleFeatures]) -> dict[int, np.ndarray]:
        """Score ``pieces`` (symbol -> its next candles) in one call; the scores by symbol."""
        order = sorted(pieces)
        segments = Segments([len(pieces[symbol].close) for symbol in order])
        memory = BucketState([self.memories[symbol] for symbol in order])
        baselines, detector = Baselines(PARAMS), self.detector(PARAMS)
        baselines.restore(memory)
        detector.restore(memory.within(detector.key))
        context = baselines.context(joined([pieces[symbol] for symbol in order]),
                                    self.seen[order][segments.ids] + segments.ranks, segments)
        scores = detector.score(context)
        assert scores.shape == (segments.ends[-1],) and scores.dtype == float
        baselines.learn(context)
        detector.learn(context)
        arrays = {**baselines.state(), **{f"{detector.key}.{name}": values for name, values in detector.state().items()}}
        for symbol, symbol_memory in zip(order, symbol_states(arrays, len(order))):
            self.memories[symbol] = unpack(pack(symbol_memory))
        self.seen[order] += segments.counts
        return {symbol: scores[start:end] for symbol, start, end in zip(order, segments.starts, segments.ends)}


def whole_series_scores(detector: type[Detector]) -> list[np.ndarray]:
    return [Stream(detector, 1).call({0: features})[0] for features in SERIES]


@pytest.fixture(scope="module", params=DETECTORS, ids=lambda detector: detector.name)
def detector(request) -> type[Detector]:
    return request.param


def test_identity_is_complete_and_unique():
    for attribute in ("name", "column", "key"):
        values = [getattr(detector, attribute) for detector in DETECTORS]
        assert all(values) and len(set(values)) == len(values), (attribute, values)
    for detector in DETECTORS:
        assert detector.key not in BASELINE_PREFIXES, detector.key  # a detector's state names are its own
        assert isinstance(detector.two_sided, bool) and isinstance(detector.own_vote, bool)
        assert detector.group is None or isinstance(detector.group, int)
        assert sections()[detector.section] == (detector.Params, detector.defaults)
    assert set(SECTIONS) == {detector.section for detector in DETECTORS}
    assert [name for group in default_groups() for name in group] == [
        detector.name for detector in sorted(DETECTORS, key=lambda d: -1 if d.group is None else d.group)
        if detector.group is not None]


def test_its_parameters_are_a_section_of_the_file(detector):
    instance = detector(PARAMS)
    assert DEFAULTS[detector.section] == detector.defaults
    assert isinstance(getattr(PARAMS, detector.section), detector.Params)
    assert isinstance(instance.warmup, int) and instance.warmup >= 0 and np.isfinite(instance.threshold)


def test_its_docstring_example_runs(detector):
    examples = [test for test in doctest.DocTestFinder().find(detector, detector.__name__,
                                                              globs=vars(inspect.getmodule(detector)).copy())
                if test.name == detector.__name__ and test.examples]
    assert examples, f"{detector.__name__} has no example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in examples:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_same_scores_whatever_the_chunking_and_the_symbols_sharing_a_call(detector):
    expected = whole_series_scores(detector)
    assert all(np.isfinite(scores[-200:]).any() for scores in expected)  # scored, not NaN throughout
    rng = np.random.default_rng(7)
    for _ in range(2):
        stream, parts = Stream(detector, len(SERIES)), [[] for _ in SERIES]
        cuts = [np.sort(rng.choice(np.arange(1, LENGTH), size=int(rng.integers(5, 40)), replace=False))
                for _ in SERIES]
        bounds = [list(zip([0, *cut], [*cut, LENGTH])) for cut in cuts]
        while any(bounds):  # each call: the next chunk of some symbols (a state bucket's micro-batch)
            chosen = [symbol for symbol in range(len(SERIES)) if bounds[symbol] and rng.random() < 0.7]
            pieces = {symbol: part(SERIES[symbol], *bounds[symbol].pop(0)) for symbol in chosen}
            if pieces:
                for symbol, scores in stream.call(pieces).items():
                    parts[symbol].append(scores)
        for symbol, scores in enumerate(expected):
            np.testing.assert_array_equal(np.concatenate(parts[symbol]), scores)


def test_one_candle_per_call_gives_the_same_scores(detector):
    expected = whole_series_scores(detector)[0]
    stream = Stream(detector, 1)
    head = stream.call({0: part(SERIES[0], 0, LENGTH - 60)})[0]
    tail = [stream.call({0: part(SERIES[0], i, i + 1)})[0] for i in range(LENGTH - 60, LENGTH)]
    np.testing.assert_array_equal(np.concatenate([head, *tail]), expected)


def test_state_round_trips_and_stays_under_its_prefix(detector):
    stream = Stream(detector, 1)
    stream.call({0: part(SERIES[0], 0, 1000)})
    stored = {name: values for name, values in stream.memories[0].items() if name.startswith(f"{detector.key}.")}
    again = detector(PARAMS)
    again.restore(BucketState([stream.memories[0]]).within(detector.key))
    restored = {f"{detector.key}.{name}": values for name, values in
                symbol_states(again.state(), 1)[0].items()}
    assert restored.keys() == stored.keys()
    for name, values in stored.items():
        np.testing.assert_array_equal(restored[name], values)
    others = set(stream.memories[0]) - set(stored)
    assert all(name.split(".")[0] in BASELINE_PREFIXES for name in others), others


def test_silent_in_warm_up(detector):
    instance = detector(PARAMS)
    positions = np.arange(LENGTH)
    scores = whole_series_scores(detector)[0]
    extreme = np.full(LENGTH, 1e9)
    for candidate in (scores, extreme, -extreme):
        votes = instance.votes(candidate, positions)
        assert votes.dtype == bool and not votes[:instance.warmup].any()
    assert instance.votes(extreme, positions)[instance.warmup:].all()  # and it can vote once warm
    assert not instance.votes(np.full(LENGTH, np.nan), positions).any()  # undefined scores never vote
