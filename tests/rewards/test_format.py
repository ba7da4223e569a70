import pytest

from r1lab.rewards.format import soft_format, strict_format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>", 1.0),
        ("  <think>a</think>\n\n<answer>b</answer>\n", 1.0),
        ("<think></think><answer>b</answer>", 0.0),
        ("<think>a</think><answer> </answer>", 0.0),
        ("<answer>b</answer>", 0.0),
        ("pre <think>a</think><answer>b</answer>", 0.0),
        ("<think>a</think>between<answer>b</answer>", 0.0),
        ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0),
        ("<think>a<think>b</think></think><answer>c</answer>", 0.0),
        ("<think>a</think><answer>b</think></answer>", 0.0),
        ("<answer>b</answer><think>a</think>", 0.0),
    ],
)
def test_strict(text, expected):
    assert strict_format(text, {}).value == expected


def test_soft_gives_partial_credit():
    assert soft_format("<think>a</think><answer>b</answer>", {}).value == 1.0
    assert soft_format("a</think><answer>b</answer>", {}).value == 0.75
    assert soft_format("<answer>b</answer><think>a</think>", {}).value == 0.5
    assert soft_format("nothing", {}).value == 0.0
