"""Run the worked examples in the docstrings of every algorithms module."""

import doctest
import importlib

import pytest

MODULES = ["__init__", "advantages", "aggregation", "kl", "losses", "metrics", "options", "mismatch"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(
        "r1lab.algorithms" if name == "__init__" else f"r1lab.algorithms.{name}"
    )
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "__init__":
        assert result.attempted > 0
