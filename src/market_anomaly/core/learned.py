"""The learned multivariate model: which combinations of candle activity are normal.

On real markets the size of a move, its volume, its range and the minutes around it
rise and fall *together*: a busy minute is busy in every respect. That shared "activity"
direction dominates the data (its first principal component). What is rare is a
combination off that direction: a big move on ordinary volume, heavy volume with no
price change, a move reversed the next minute, a run of same-direction minutes. So the
model learns the principal components of the (one-sided, log-compressed) inputs from
history and scores a candle by its Mahalanobis distance in the *minor* components,
ignoring how busy it is along the activity direction (minor component analysis;
natural busy markets are not alarms, inconsistent ones are). Extreme moves along the
activity direction itself are the z-score detector's job.

The fitted state (mean, minor directions and their scales) is a small ``.npz`` next to
``model_params.json``. Scoring uses element-wise NumPy only, so a candle's score does
not depend on how many candles are scored together (no BLAS blocking in the hot path).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

MAX_MODEL_BYTES = 1 << 20  # a fitted model is about a kilobyte: anything near this is not one
ARRAYS = ("mean", "directions", "scales")
INPUT_NAMES = ("abs_return_z", "volume_excess", "range_excess", "recent_rms_z", "recent_drift_z",
               "reversal", "recent_volume_excess")


def model_inputs(zscore: np.ndarray, log_volume_ratio: np.ndarray, log_range_ratio: np.ndarray,
                 recent_rms_z: np.ndarray, recent_drift_z: np.ndarray, reversal: np.ndarray,
                 recent_log_volume_ratio: np.ndarray) -> np.ndarray:
    """The (n, 7) input matrix: only excess activity counts (a quiet minute is not an anomaly), logs tame tails.

    >>> model_inputs(*(np.array([value]) for value in (-3.0, -1.0, 1.0, 3.0, 3.0, 0.0, 0.5))).round(3).tolist()
    [[1.386, 0.0, 1.0, 1.386, 1.386, 0.0, 0.5]]
    """
    return np.column_stack([np.log1p(np.abs(zscore)), np.maximum(log_volume_ratio, 0), np.maximum(log_range_ratio, 0),
                            np.log1p(recent_rms_z), np.log1p(np.abs(recent_drift_z)), np.log1p(reversal),
                            np.maximum(recent_log_volume_ratio, 0)])


class MinorComponents:
    """Mahalanobis distance of inputs in the minor principal components of the training data.

    >>> rng = np.random.default_rng(0)
    >>> activity = rng.normal(size=(5000, 1))
    >>> normal = np.hstack([activity, activity + 0.1 * rng.normal(size=(5000, 1))])  # the two move together
    >>> model = MinorComponents.fit(normal, skip=1)
    >>> busy, inconsistent = model.distance(np.array([[4.0, 4.0], [0.0, 1.0]]))
    >>> bool(busy < 1.0 < 9.0 < inconsistent)
    True
    """

    def __init__(self, mean: np.ndarray, directions: np.ndarray, scales: np.ndarray):
        self.mean, self.directions, self.scales = mean, directions, scales
        for array in (mean, directions, scales):
            array.setflags(write=False)

    @classmethod
    def fit(cls, inputs: np.ndarray, skip: int) -> "MinorComponents":
        """Principal components of the complete rows of ``inputs``; the ``skip`` largest are left out."""
        inputs = inputs[np.isfinite(inputs).all(axis=1)]
        if len(inputs) <= inputs.shape[1] * 10:
            raise ValueError(f"{len(inputs)} complete rows are too few to fit {inputs.shape[1]} inputs")
        mean = inputs.mean(axis=0)
        variances, vectors = np.linalg.eigh(np.cov(inputs - mean, rowvar=False))  # ascending variances
        keep = inputs.shape[1] - skip
        return cls(mean, vectors[:, :keep].copy(), np.sqrt(np.maximum(variances[:keep], 1e-12)))

    def distance(self, inputs: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance in the minor components, per row (NaN where a row has NaN)."""
        centered = inputs - self.mean
        total = np.zeros(len(inputs))
        for k in range(self.directions.shape[1]):
            projected = np.zeros(len(inputs))
            for i in range(self.directions.shape[0]):
                projected += centered[:, i] * self.directions[i, k]
            total += (projected / self.scales[k]) ** 2
        return total

    def save(self, path_or_file) -> None:
        np.savez(path_or_file, mean=self.mean, directions=self.directions, scales=self.scales)

    @classmethod
    def load(cls, path: Path | str) -> "MinorComponents":
        """The model ``save`` wrote; ``ValueError`` for anything else, before reading more than it declares: a file
        over ``MAX_MODEL_BYTES``, or an array whose header claims more (a header can claim gigabytes)."""
        if os.path.getsize(path) > MAX_MODEL_BYTES:
            raise ValueError(f"{os.path.getsize(path)} bytes, more than a model's {MAX_MODEL_BYTES}")
        with zipfile.ZipFile(path) as archive:
            for name in ARRAYS:
                with archive.open(f"{name}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > MAX_MODEL_BYTES:
                        raise ValueError(f"{name} claims shape {shape}, more than a model's {MAX_MODEL_BYTES} bytes")
        with np.load(path, allow_pickle=False) as stored:
            model = cls(*(np.array(stored[name], dtype=float) for name in ARRAYS))
        dims = len(INPUT_NAMES)
        if (model.mean.shape != (dims,) or model.directions.ndim != 2 or model.directions.shape[0] != dims
                or model.scales.shape != (model.directions.shape[1],) or not (model.scales > 0).all()
                or not all(np.isfinite(a).all() for a in (model.mean, model.directions, model.scales))):
            raise ValueError(f"expected minor components over {dims} inputs with positive finite scales")
        return model
