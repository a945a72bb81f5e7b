"""A full scoring run still gives the decisions recorded before the detector contract (issue 12): bit for bit.

The digests were first taken with the code before the change (commit 530e0b5) and re-recorded
for issue 11 (quantisation, per-symbol self-calibration, the parameters retrained on all the
development data, injected events sized on the minutes that trade), with the committed
``model_params.json``: a synthetic market of five symbols with every kind of injected event
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
    "synthetic": ("3edcd7932c9a19c1", "1f099f1874d4b944"),
    "binance/BTCUSDT_1m.csv": ("42276de849323c21", "850a853346ee3645"),
    "binance/ETHUSDT_1m.csv": ("b38c89e233241c5b", "67e975828e072bf5"),
    "binance-futures/FILUSDT_1m_2023-06.csv": ("be2b6230f842ee26", "c47adb4d434fd9ef"),
    "pumps-2020/APPCBTC_pump_2020-11-18_1800_1m.csv": ("476f05abe65201d2", "8585e90fca83686e"),
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
    assert decisions["is_anomaly"].sum() >= 40 and decisions["votes"].sum() > 300  # something to compare
    check(decisions, "synthetic")


@pytest.mark.parametrize("dataset", [name for name in RECORDED if name != "synthetic"])
def test_real_files_decide_as_before(params, shared_data, dataset):
    check(score_candles(read_candles(shared_data / dataset), params), dataset)
