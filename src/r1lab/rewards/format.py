"""Format rewards: the R1 template `<think>...</think><answer>...</answer>`, strict and soft."""

from __future__ import annotations

import re
from typing import Any

from r1lab.rewards.base import REWARDS, Score

_STRICT = re.compile(r"^<think>(.*?)</think>\s*<answer>(.*?)</answer>$", re.S)
_TAG = re.compile(r"</?(?:think|answer)>")


@REWARDS.register("format")
def strict_format(completion: str, row: dict | None = None, **_: Any) -> Score:
    """1.0 for exactly one non-empty `<think>` block then one non-empty `<answer>` block.

    Whitespace around the whole text and between the blocks is allowed; nothing else is: no
    text before, between or after, no nested or stray tags.

    >>> strict_format("<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>").value
    1.0
    >>> strict_format("<think>x</think><answer>1</answer> extra").value
    0.0
    >>> strict_format("<think>x <answer>2</answer></think><answer>1</answer>").value
    0.0
    """
    m = _STRICT.match(completion.strip())
    ok = bool(
        m
        and m.group(1).strip()
        and m.group(2).strip()
        and len(_TAG.findall(completion)) == 4  # nested or stray tags would add more
    )
    return Score(float(ok))


@REWARDS.register("format_soft")
def soft_format(completion: str, row: dict | None = None, **_: Any) -> Score:
    """Partial credit: 0.25 for each of `<think>`, `</think>`, `<answer>`, `</answer>` present
    exactly once and in order; 1.0 exactly when all four are.

    >>> soft_format("I think</think><answer>4</answer>").value
    0.75
    >>> soft_format("<think>a</think> trailing text <answer>4</answer> more").value
    1.0
    """
    tags = ["<think>", "</think>", "<answer>", "</answer>"]
    score, pos = 0.0, -1
    for tag in tags:
        at = completion.find(tag)
        if completion.count(tag) == 1 and at > pos:
            score += 0.25
            pos = at
    return Score(score)
