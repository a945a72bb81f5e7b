"""A full scoring run still gives the decisions recorded before the detector contract (issue 12): bit for bit.

The digests were taken with the code before the change (commit 530e0b5, the committed
``model_params.json``): a synthetic market of five symbols with every kind of injected event
and a market-wide crash, and, where ``../shared/data`` exists, real files. Per dataset two
digests, each over named columns (their order in the record does not matter): the decision
columns (votes, flag, confidence, reasons, market event), compared everywhere, and every
column (features and scores as float64 bits), compared under the NumPy version that
recorded them (another NumPy's ``log``/``exp`` may differ in the last bit). A change meant to
change decisions (a new detector, new parameters) re-records them: ``digest(decisions, names)``
of the same scoring runs, in the same commit.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from market_anomaly.candles.files import read_candles
from market_anomaly.core import load_params
from market_anomaly.training.injection import KINDS, inject
from market_anomaly.training.scoring import score_candles
from support import REPOSITORY, market

RECORDED_WITH_NUMPY = "2.4.6"
DECISION_COLUMNS = ("symbol", "open_time", "votes", "is_anomaly", "confidence", "reasons", "market_event")
RECORDED = {  # dataset -> (digest of the decision columns, digest of every column)
    "synthetic": ("8792f631ba6fdae7", "afce37a15c6e7d28"),
    "binance/BTCUSDT_1m.csv": ("5b0190ea592a4e0f", "5047b0c70cdbfb67"),
    "binance/ETHUSDT_1m.csv": ("27b80d7a16bbd312", "bda23e902b2efb3f"),
    "binance-futures/FILUSDT_1m_2023-06.csv": ("1b363f63f983a64a", "4974d43806da8820"),
    "pumps-2020/APPCBTC_pump_2020-11-18_1800_1m.csv": ("4c87c3af20f80df5", "e851de6b5b467875"),
}


def column_digest(values: np.ndarray) -> str:
    values = np.asarray(values)
    if values.dtype.kind == "f":
        data = np.where(np.isnan(values), np.nan, values).astype("<f8").tobytes()  # one NaN bit pattern
    elif values.dtype.kind in "biu":
        data = values.astype("<i8").tobytes()
    else:
        data = "\x1f".join(map(str, values)).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def digest(decisions: pd.DataFrame, names) -> str:
    parts = "".join(f"{name}={column_digest(decisions[name].to_numpy())};" for name in sorted(names))
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


def synthetic_market() -> pd.DataFrame:
    frames = []
    for seed, symbol in enumerate(["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT"]):
        frame = market(3000, seed, symbol)
        for number, kind in enumerate(KINDS):
            frame, _ = inject(frame, kind, 1200 + 300 * number + 20 * seed, np.random.default_rng(seed * 10 + number))
        frame, _ = inject(frame, "flash_crash", 2800, np.random.default_rng(seed), magnitude=0.06)  # market-wide
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def params():
    return load_params(REPOSITORY / "model_params.json")


def check(decisions: pd.DataFrame, dataset: str) -> None:
    decision_digest, every_digest = RECORDED[dataset]
    assert digest(decisions, DECISION_COLUMNS) == decision_digest, f"{dataset}: decisions changed"
    if np.__version__ == RECORDED_WITH_NUMPY:
        assert digest(decisions, decisions.columns) == every_digest, f"{dataset}: a feature or score changed"


def test_the_synthetic_market_decides_as_before(params):
    decisions = score_candles(synthetic_market(), params)
    assert decisions["is_anomaly"].sum() > 50 and decisions["market_event"].sum() > 0  # something to compare
    check(decisions, "synthetic")


@pytest.mark.parametrize("dataset", [name for name in RECORDED if name != "synthetic"])
def test_real_files_decide_as_before(params, shared_data, dataset):
    check(score_candles(read_candles(shared_data / dataset), params), dataset)
