import pytest
from tests_helpers_math import score_table  # noqa: F401  (path set in conftest)

from r1lab.rewards.math import accuracy, answers_match, normalize, shape


def test_demo_completion_scores_one():
    s = accuracy("<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>", {"answer": "68"})
    assert s.value == 1.0
    assert s.metrics == {"extracted_answer": "68", "no_answer": False, "parse_failure": False}


def test_missing_answer_is_zero_and_counted():
    s = accuracy("<think>it is 68</think>", {"answer": "68"})
    assert s.value == 0.0 and s.metrics["no_answer"] is True


def test_unparseable_answer_is_a_parse_failure():
    s = accuracy("<think>x</think><answer>\\frac{</answer>", {"answer": "68"})
    assert s.value == 0.0 and s.metrics["parse_failure"] is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(r"1\,000", "1000"), (r"14{,}916", "14916"), (r"3{,}5", "3.5"), ("25 000", "25000"),
     (r"0.1\overline{6}", r"\frac{15}{90}"), ("1.5e-3", r"1.5 \times 10^{-3}"), (r"$7$", "7")],
)  # fmt: skip
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_shape_tells_tuples_from_sets():
    assert [shape(s) for s in ["(1, 2)", r"\{1\}", "1, 2", "(1)(2)"]] == [
        "tuple", "set", "list", "single",
    ]  # fmt: skip


def test_pair_is_not_answered_by_set_or_reordered_list():
    assert answers_match("(1, 2)", r"\{1, 2\}") == (False, True)
    assert answers_match("(1, 2)", "2, 1") == (False, True)
    assert answers_match("(1, 2)", "1, 2") == (True, True)


def test_gold_may_be_a_number_or_boxed():
    assert accuracy("<answer>0.25</answer>", {"answer": 0.25}).value == 1.0
    assert accuracy("<answer>4</answer>", {"answer": r"so \boxed{4}"}).value == 1.0


def test_custom_answer_key():
    assert accuracy("<answer>3</answer>", {"gold": "3"}, answer_key="gold").value == 1.0


def test_works_in_a_worker_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        s = pool.submit(accuracy, r"<answer>\frac{2}{4}</answer>", {"answer": "0.5"}).result()
    assert s.value == 1.0


def test_math_table_every_case():
    rows = score_table()
    wrong = [(c, g, p) for c, g, p, e, ours, _ in rows if ours != e]
    assert len(rows) >= 150
    assert wrong == []
