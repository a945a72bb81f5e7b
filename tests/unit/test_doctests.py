"""Every example in the package's docstrings is true: modules are found by walking the package, not listed."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import market_anomaly


def package_modules() -> list[str]:
    # __main__ runs the command line when imported.
    return sorted(info.name for info in pkgutil.walk_packages(market_anomaly.__path__, "market_anomaly.")
                  if not info.name.endswith("__main__"))


def modules_with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    return [name for name in package_modules()
            if any(test.examples for test in finder.find(importlib.import_module(name)))]


def test_the_walk_finds_the_core_and_its_examples():
    names = modules_with_examples()
    assert {"market_anomaly.core.detectors", "market_anomaly.training.train"} <= set(names), names


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
