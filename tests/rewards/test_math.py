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


# --- cases from math-verify 0.9.0's regression suite (benchmarks/math_verify_suite.py), written out


def _grade(pred: str, gold: str) -> float:
    return accuracy(f"<answer>{pred}</answer>", {"answer": gold}).value


@pytest.mark.parametrize(
    ("gold", "pred"),
    [("$9$", "Answer $ 9 $"), ("$9$", "Answer $$ \n 9 \n $$"), ("2.74", "Soucis : 2,74 $ a.."),
     ("$10/9$", r"Answer $ \frac{1}{2} \$ = \frac{10}{9} $"),
     ("$34$", "Final Answer: The largest $n$ is 34.")],
)  # fmt: skip
def test_text_before_the_math_in_the_answer(gold, pred):
    assert _grade(pred, gold) == 1.0


def test_inline_math_does_not_cross_lines():
    # math-verify's own rule (its test expects 0): `\( ... \)` split over lines is not math
    s = accuracy("<answer>Answer \\( \n 9 \n \\)</answer>", {"answer": "$9$"})
    assert s.value == 0.0 and s.metrics["no_answer"] is True


@pytest.mark.parametrize(
    ("gold", "pred"),
    [("1000.99", "1000,99"), ("1,22", "1.22"), ("1000.99", "1,000.99"), ("7425000", "7,425,000")],
)
def test_decimal_commas_and_thousands(gold, pred):
    assert _grade(pred, gold) == 1.0


def test_a_comma_list_still_answers_a_list():
    assert _grade("1, 22", r"\{1, 22\}") == 1.0
    assert _grade("1.22", r"\{1, 22\}") == 0.0


@pytest.mark.parametrize(
    ("gold", "pred"),
    [("$$(2, 2), (6, 2)$$", r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$"),
     ("$$(3, 3), (1, 1)$$", r"$$\boxed{(3, 3)} \text{ for part (a) and } \boxed{(1, 1)}$$"),
     ("$$k = 45, n = 2$$", r"$$\boxed{k = 45} \quad \text{and} \quad \boxed{n = 2}$$"),
     ("$$a_3 = 2, a_{37} = 19$$", r"$$\boxed{a_{37} = 19, \quad a_3 = 2}$$"),
     ("$$(5, 8), (8, 5)$$", r"$$\boxed{(x, y) = (5, 8) \quad \text{and} \quad (8, 5)}$$"),
     (r"\boxed{1} papers and \boxed{2} bins", r"$\boxed{1,2}$"),
     (r"\(\boxed{1}\) and \(\boxed{-2}\).", r"$\boxed{-2,1}$."),
     ("$p=5,q=2;p=7,q=2$", "$(5,2),(7,2)$")],
)  # fmt: skip
def test_multi_part_answers(gold, pred):
    assert _grade(pred, gold) == 1.0


def test_boxes_far_apart_in_a_gold_are_not_one_answer():
    assert _grade(r"$\boxed{1,2}$", r"\boxed{1} no no no no no \boxed{2}") == 0.0


def test_minerva_final_answer_phrase_wins_over_earlier_boxes():
    pred = (r"so $0.04 \cdot 10,000 \cdot \frac{1}{2} = \boxed{200}$ and then \boxed{255}. "
            r"Final Answer: The final answer is $10,455$. I hope it is correct.")
    assert _grade(pred, "$10455$") == 1.0
    assert _grade(pred, "$255$") == 0.0


@pytest.mark.parametrize(
    "pred",
    [r"\boxed{4} or \boxed{5}", r"\boxed{4}, \boxed{5}", "4 or 5", "The answer is 4 or 5",
     "The answer is $4$ or $5$.", "I think 4, or 5", r"\boxed{4} \quad \text{and} \quad \boxed{5}"],
)  # fmt: skip
def test_hedging_never_pays_for_a_single_gold(pred):
    assert _grade(pred, "5") == 0.0 and _grade(pred, "4") == 0.0


def test_hedging_with_extra_candidates_fails_a_multi_part_gold():
    assert _grade(r"\boxed{1} \quad \text{and} \quad \boxed{2}", "1, 2") == 1.0
    assert _grade(r"\boxed{1}, \boxed{2}, \boxed{3}", "1, 2") == 0.0


def test_missing_gold_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="no gold answer in field 'answer'"):
        accuracy("<answer>3</answer>", {"question": "1+2"})
    with pytest.raises(ValueError, match="'gold'"):
        accuracy("<answer>3</answer>", {"gold": None}, answer_key="gold")


# the four cases of the suite r1lab grades differently on purpose (POLICIES in the benchmark)


def test_policy_default_precision_not_the_cases_stated_one():
    # the suite grades these at precision=2; r1lab has one precision for every answer
    assert _grade(r"$\begin{pmatrix}0.33\\0.2 \end{pmatrix}$",
                  r"$(\begin{pmatrix}\frac{1}{3}\\ \frac{1}{5} \end{pmatrix})$") == 0.0
    assert _grade("$(0.6,2.6667]$", r"$(\frac{3}{5},\frac{8}{3}]$") == 0.0


def test_policy_an_inequality_answers_an_interval_both_ways():
    # the suite expects 0 only with allow_set_relation_comp=False; r1lab always allows it
    assert _grade(r"$-2 \\le x \\le 7$", r"$x \in [-2,7]$") == 1.0
    assert _grade(r"$x \in [-2,7]$", r"$-2 \\le x \\le 7$") == 1.0


def test_policy_variables_compared_strictly():
    # the suite expects 1 only with strict=False
    assert _grade("$f(y)$", "$f(x)$") == 0.0


def test_multiple_choice_rows_are_graded_on_the_letter():
    row = {"answer": "B", "choices": ["Iron", "Neon", "Carbon", "Zinc"]}
    graded = {c: accuracy(f"<answer>{c}</answer>", row).value
              for c in ["B", "(B)", "B) Neon", "The answer is B", r"\boxed{B}", "C", "A or B", "Neon"]}
    assert graded == {"B": 1.0, "(B)": 1.0, "B) Neon": 1.0, "The answer is B": 1.0, r"\boxed{B}": 1.0,
                      "C": 0.0, "A or B": 0.0, "Neon": 0.0}


def test_docstring_examples():
    import doctest

    from r1lab.rewards import math as rmath

    result = doctest.testmod(rmath)
    assert result.failed == 0 and result.attempted >= 18
