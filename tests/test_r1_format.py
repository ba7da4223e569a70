"""The one R1-format parser, and that every caller reads through it."""

import pytest

from r1lab.analysis.behaviour import think_text
from r1lab.r1_format import parse_r1
from r1lab.rewards.parsing import extract_answer, strip_think
from r1lab.serve import split_reasoning
from r1lab.train.common import thinks

CASES = [
    # text, reasoning, think_closed, visible, answer
    ("<think>a</think><answer>1</answer>", "a", True, "<answer>1</answer>", "1"),
    ("a</think><answer>1</answer>", "a", True, "<answer>1</answer>", "1"),
    ("<think>a", "a", False, "", None),
    ("pre <think>a</think> post", "a", True, "pre  post", None),
    ("<think>a</think>b<think>c</think><answer>2</answer>", "a</think>b<think>c", True,
     "<answer>2</answer>", "2"),
    ("a</think>b<think>c", "a", True, "b", None),
    ("<answer>1</answer><answer>3", None, False, "<answer>1</answer><answer>3", "1"),
    ("", None, False, "", None),
]


@pytest.mark.parametrize("text,reasoning,closed,visible,answer", CASES)
def test_parse_r1_cases(text, reasoning, closed, visible, answer):
    p = parse_r1(text)
    assert (p.reasoning, p.think_closed, p.visible, p.answer) == (reasoning, closed, visible, answer)


def test_answer_closed_and_opened_option():
    assert parse_r1("<answer>1</answer>").answer_closed
    assert not parse_r1("<answer>1</answer><answer>2").answer_closed
    assert parse_r1("no tags").answer_closed
    assert parse_r1("reasoning so far", opened=True).reasoning == "reasoning so far"
    assert parse_r1("reasoning so far").reasoning is None


@pytest.mark.parametrize("text", [c[0] for c in CASES] + ["<think> </think><answer>7</answer>"])
def test_every_caller_agrees_with_the_parser(text):
    p = parse_r1(text)
    assert strip_think(text) == p.visible
    assert thinks(text) == p.thinks == bool(p.think_closed and (p.reasoning or "").strip())
    assert think_text(text) == (p.reasoning or "")
    reasoning, content = split_reasoning(text)
    assert reasoning == (None if p.reasoning is None else p.reasoning.strip())
    assert content == p.content.strip()
    # nothing inside the thinking is ever graded
    if p.answer is None and "boxed" not in p.visible:
        assert extract_answer(text) is None
