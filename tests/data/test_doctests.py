"""The worked examples in the docstrings of the data modules run (formats, validate)."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["r1lab.data.formats", "r1lab.data.validate"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
