"""Bootstrap intervals and the contamination check, against values worked out by hand."""

import itertools

import pytest

from r1lab.evaluation.metrics import bootstrap_ci, contamination


def _exact_percentiles(scores, level=0.95):
    """The 2.5% / 97.5% points (the smallest mean whose cumulative share passes the level) of the
    exact bootstrap distribution of the mean, enumerating every one of the n^n resamples."""
    n = len(scores)
    means = sorted(sum(scores[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n))
    tail = (1 - level) / 2
    return means[int(tail * len(means))], means[int((1 - tail) * len(means))]


@pytest.mark.parametrize("scores", [[0, 0, 0, 1], [1, 1, 1, 0], [0, 0.5, 1], [0.25, 0.75, 1, 1, 0]])
def test_bootstrap_ci_matches_the_exact_bootstrap_distribution(scores):
    assert bootstrap_ci(scores, resamples=20000, seed=1) == pytest.approx(_exact_percentiles(scores))


def test_bootstrap_ci_hand_computed_and_seeded():
    # (1, 1, 1, 0): mean ~ Binomial(4, 3/4) / 4; P(<= 0.25) = 0.051 > 0.025 > P(0) = 0.004
    assert bootstrap_ci([1, 1, 1, 0], seed=0) == (0.25, 1.0)
    assert bootstrap_ci([1, 0], seed=0) == (0.0, 1.0)  # means 0, 0.5, 1 with P 1/4, 1/2, 1/4
    assert bootstrap_ci([1, 0, 1, 1, 0, 0, 1], seed=5) == bootstrap_ci([1, 0, 1, 1, 0, 0, 1], seed=5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_contamination_counts_shared_ngrams():
    train = ["Natalia sold clips to 48 of her friends in April", "What is 2 + 3?"]
    evals = ["Natalia sold clips to 48 of her friends in May",  # shares 8-grams
             "Weng earns 12 an hour for babysitting",  # shares nothing
             "what is 2 + 3?"]  # shorter than n: all of it appears in a training prompt
    out = contamination(train, evals, n=8)
    assert (out["contaminated"], out["problems"], out["examples"]) == (2, 3, [0, 2])
    assert out["rate"] == pytest.approx(2 / 3)
    assert contamination(train, evals, n=9)["examples"] == [0, 2]  # 9 of its 10 words shared
    assert contamination(train, evals, n=10)["examples"] == [2]
