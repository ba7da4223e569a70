import pytest

from r1lab.evaluation import majority_vote, pass_at_k


def test_pass_at_k_hand_computed():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 1 - C(7,2)/C(10,2) = 1 - 21/45
    assert pass_at_k(10, 3, 2) == pytest.approx(24 / 45)
    assert pass_at_k(5, 5, 5) == 1.0 and pass_at_k(5, 0, 5) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_majority_vote_counts_answers_not_correctness():
    # the majority answer "7" is wrong, though a minority got it right
    assert majority_vote(["7", "7", "8"], [False, False, True]) is False
    assert majority_vote(["8", None, None, "7"], [True, False, False, False]) is True
