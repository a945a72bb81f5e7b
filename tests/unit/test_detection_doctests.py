"""The examples in the detection modules' docstrings are true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ("calibration", "consensus", "detectors", "evaluation", "features", "injection", "learned", "state")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"market_anomaly.detection.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
