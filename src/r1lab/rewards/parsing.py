"""Pull the graded part out of an R1 completion: drop the thinking, find `<answer>` and `\\boxed{}`.

Text inside `<think>` is never graded. A completion from a chat template whose prompt already
opened `<think>` starts in the middle of the thinking, so everything before the last `</think>`
is thinking too; an unclosed `<think>` swallows the rest of the text.
"""

from __future__ import annotations

import re

from r1lab.r1_format import parse_r1

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# what may sit between two \boxed{} for them to be read as one list of answers
_LIST_GAP_RE = re.compile(
    r"^[\s,;$.]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad)[\s,;$.]*)?$"
)


def strip_think(text: str) -> str:
    """The part of `text` that is not thinking (`r1lab.r1_format.parse_r1`'s `visible`).

    >>> strip_think("<think>2+2=5?</think><answer>4</answer>")
    '<answer>4</answer>'
    >>> strip_think("so 2+2=4</think> The answer is 4")
    ' The answer is 4'
    >>> strip_think("<answer>4</answer><think>unfinished")
    '<answer>4</answer>'
    """
    return parse_r1(text).visible


def last_block(text: str, tag: str) -> str | None:
    """Content of the last closed `<tag>...</tag>` in `text`, or None.

    >>> last_block("<answer>1</answer> then <answer> 2 </answer>", "answer")
    ' 2 '
    >>> last_block("<answer>3", "answer") is None
    True
    """
    end = text.rfind(f"</{tag}>")
    if end < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, end)
    if start < 0:
        return None
    return text[start + len(tag) + 2 : end]


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """Every complete `\\boxed{...}` as (start, end, content), nested braces handled.

    >>> [c for _, _, c in boxed_spans(r"\\boxed{\\frac{1}{2}} and \\boxed{3")]
    ['\\\\frac{1}{2}']
    """
    spans = []
    for m in _BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2  # \{ and \} are literal braces, not grouping
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((m.start(), i, text[m.end() : i - 1]))
    return spans


def last_boxed(text: str) -> str | None:
    """The last `\\boxed{}` content; consecutive boxes separated only by commas or "and" form a list.

    >>> last_boxed(r"first \\boxed{1}, wait, no: \\boxed{2}")
    '2'
    >>> last_boxed(r"x = \\boxed{2} and \\boxed{3}")
    '2, 3'
    """
    every = boxed_spans(text)
    # a box nested in another (`\\boxed{\\boxed{1}}`) is part of the outer one
    spans = [s for s in every if not any(o[0] < s[0] and s[1] <= o[1] for o in every)]
    if not spans:
        return None
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        if not _LIST_GAP_RE.match(text[prev[1] : group[0][0]]):
            break
        group.insert(0, prev)
    return ", ".join(c.strip() for _, _, c in group)


def extract_answer(completion: str) -> str | None:
    """The answer R1 grades: last `<answer>` (its last `\\boxed{}` if any), else last `\\boxed{}`.

    Thinking is removed first, so an answer that only appears inside `<think>` is no answer.

    >>> extract_answer("<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>")
    '68'
    >>> extract_answer(r"<think>\\boxed{5}</think>So the answer is \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_answer(r"<think>it is \\boxed{5}</think>I am not sure.") is None
    True
    """
    visible = strip_think(completion)
    block = last_block(visible, "answer")
    if block is not None:
        boxed = last_boxed(block)
        answer = boxed if boxed is not None else block
    else:
        answer = last_boxed(visible)
    if answer is None or not answer.strip():
        return None
    return answer.strip()
