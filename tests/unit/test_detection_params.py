"""Parameter reload hardening (issue 13): non-finite, out-of-range and oversized files are rejected with one
ERROR line while the previous parameters stay in force, and an edit that lands during a reload is not missed."""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile

import numpy as np
import pytest

from market_anomaly.core import InvalidParams, ParamsWatcher
from market_anomaly.core import params as params_module
from market_anomaly.core.learned import MAX_MODEL_BYTES
from market_anomaly.training.train import write_params
from support import REPOSITORY

COMMITTED = json.loads((REPOSITORY / "model_params.json").read_text())


@pytest.fixture
def watched(tmp_path):
    """A parameter file (the committed one and its model, copied) and a watcher that has loaded it."""
    path = tmp_path / "model_params.json"
    path.write_text(json.dumps(COMMITTED))
    (tmp_path / COMMITTED["learned"]["file"]).write_bytes((REPOSITORY / COMMITTED["learned"]["file"]).read_bytes())
    watcher = ParamsWatcher(path)
    watcher.current()
    return path, watcher


def touch_later(path) -> None:
    """A new modification time, as an edit a second later has (coarse file-system clocks included)."""
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))


def edited(path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))  # inf/NaN as JSON's Infinity/NaN, which Python's reader accepts
    touch_later(path)


def claimed_model(shape: tuple[int, ...]) -> bytes:
    """An .npz whose ``mean`` header claims ``shape`` float64 values without holding them."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as files:
        files.writestr("mean.npy", header.getvalue())  # the header (magic included), no data
        for name in ("directions", "scales"):
            files.writestr(f"{name}.npy", b"")
    return archive.getvalue()


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["return_zscore"].update(threshold=float("inf")), "return_zscore.threshold must be a finite number"),
    (lambda d: d["volume"].update(threshold=float("nan")), "volume.threshold must be a finite number"),
    (lambda d: d["consensus"].update(threshold=float("inf")), "consensus.threshold must be a finite number"),
    (lambda d: d["consensus"].update(threshold=-1.0), "consensus.threshold"),
    (lambda d: d["learned"].update(alarm_score=float("inf")), "learned.alarm_score must be a finite number"),
    (lambda d: d["consensus"]["offsets"].update({"Z-SCORE": float("-inf")}), "consensus.offsets"),
    (lambda d: d["consensus"].update(alone={"Z-SCORE": float("inf")}), "consensus.alone"),
    (lambda d: d["consensus"]["confidence"].update(HIGH=float("inf")), "consensus.confidence"),
    (lambda d: d["calibration"]["Z-SCORE"]["scores"].__setitem__(-1, float("inf")), "calibration.Z-SCORE"),
    (lambda d: d["calibration"]["VOLUME"].update(tail_slope=float("inf")), "calibration.VOLUME"),
    (lambda d: d["volatility"].update(window=10 ** 8), "volatility: window must be between 2 and 100000"),
    (lambda d: d["runs"].update(return_window=1), "runs: return_window must be between 2"),
    (lambda d: d["learned"].update(sequence=10 ** 6), "learned: sequence must be between 2 and 100000"),
    (lambda d: d["range"].update(floor_pct=0.0), "range: floor_pct must be above 0"),
    (lambda d: d.update(refresh=0), "refresh must be between 1"),
    (lambda d: d["volume"].update(warmup=10 ** 12), "volume.warmup must be an integer from 0 to"),
    (lambda d: d["consensus"].update(own_memory_candles=50), "consensus.own_memory_candles counts candles"),
    (lambda d: d["consensus"].update(own_memory_candles=1.5), "consensus.own_memory_candles must be an integer"),
])
def test_a_bad_edit_is_rejected_with_one_error_and_the_previous_parameters_stay(watched, caplog, change, reason):
    path, watcher = watched
    before = watcher.current()
    edited(path, change)
    with caplog.at_level(logging.ERROR, logger="market_anomaly"):
        assert watcher.current() is before and watcher.current() is before  # once logged, not again
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and reason in errors[0], errors
    with pytest.raises(InvalidParams, match=reason):  # and a first load fails with the same reason
        ParamsWatcher(path).current()


@pytest.mark.parametrize("content, reason", [
    (claimed_model((4_000_000_000,)), "mean claims shape (4000000000,)"),  # 32 GB
    (b"\0" * (MAX_MODEL_BYTES + 1), "more than a model's"),
])
def test_an_oversized_model_file_is_rejected_before_it_is_read(watched, caplog, content, reason):
    path, watcher = watched
    before = watcher.current()
    model = path.parent / COMMITTED["learned"]["file"]
    model.write_bytes(content)
    touch_later(model)
    with caplog.at_level(logging.ERROR, logger="market_anomaly"):
        assert watcher.current() is before and watcher.current() is before
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unusable" in errors[0] and reason in errors[0], errors
    with pytest.raises(InvalidParams, match="unusable"):
        ParamsWatcher(path).current()


def test_the_previous_parameters_serve_until_the_file_is_fixed(watched, caplog):
    path, watcher = watched
    before = watcher.current()
    edited(path, lambda d: d["return_zscore"].update(threshold=float("inf")))
    with caplog.at_level(logging.ERROR, logger="market_anomaly"):
        assert watcher.current() is before
    edited(path, lambda d: d["return_zscore"].update(threshold=6.5))
    assert watcher.current().return_zscore.threshold == 6.5


def test_an_edit_landing_while_a_reload_reads_the_file_is_applied_next(watched, monkeypatch):
    path, watcher = watched
    edited(path, lambda d: d["return_zscore"].update(threshold=6.0))
    read = params_module.read_params

    def read_then_edit_again(file):  # the reload reads threshold 6.0; meanwhile another edit lands
        params = read(file)
        edited(path, lambda d: d["return_zscore"].update(threshold=7.0))
        return params

    monkeypatch.setattr(params_module, "read_params", read_then_edit_again)
    assert watcher.current().return_zscore.threshold == 6.0
    monkeypatch.setattr(params_module, "read_params", read)
    assert watcher.current().return_zscore.threshold == 7.0


def test_a_model_written_while_a_reload_reads_it_is_applied_next(watched, tmp_path, monkeypatch):
    path, watcher = watched
    first = watcher.current()
    model = path.parent / COMMITTED["learned"]["file"]
    touch_later(model)
    load = params_module.with_learned_model
    refitted = params_module.load_params(path)
    refitted_model = type(first.model)(first.model.mean + 1.0, first.model.directions, first.model.scales)

    def load_then_rewrite(params, file):  # the reload reads the model; meanwhile train writes a new one
        loaded = load(params, file)
        write_params(params_module._with_model(refitted, refitted_model), path)
        touch_later(model)
        return loaded

    monkeypatch.setattr(params_module, "with_learned_model", load_then_rewrite)
    assert np.array_equal(watcher.current().model.mean, first.model.mean)
    monkeypatch.setattr(params_module, "with_learned_model", load)
    assert np.array_equal(watcher.current().model.mean, first.model.mean + 1.0)
