"""The worked examples in the docstrings of the evaluation metrics run."""

import doctest

from r1lab.evaluation import metrics


def test_docstring_examples() -> None:
    result = doctest.testmod(metrics)
    assert result.failed == 0 and result.attempted >= 8
