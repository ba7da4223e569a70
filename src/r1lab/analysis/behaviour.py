"""Measures of the behaviour R1-Zero reports: thinking grows longer, reflection words appear.

>>> reflection_counts("<think>7+9=15, wait, let me check: 7+9=16</think><answer>16</answer>")
{'wait': 1, 'check': 1}
>>> think_length("<think>abc</think><answer>1</answer>"), think_length("<answer>1</answer>")
(3, 0)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from r1lab.r1_format import parse_r1

#: words the paper and follow-ups count as self-reflection / verification
REFLECTION_WORDS = ("wait", "verify", "check", "recheck", "re-evaluate", "reevaluate", "mistake",
                    "however", "actually", "alternatively", "hmm")
_WORD = re.compile(r"[a-z][a-z-]*")


def think_text(completion: str) -> str:
    """The reasoning of a completion (`r1lab.r1_format.parse_r1`), "" when it has none."""
    return parse_r1(completion).reasoning or ""


def think_length(completion: str) -> int:
    """Characters inside the first <think> block (0 when there is none)."""
    return len(think_text(completion))


def reflection_counts(completion: str, words: Sequence[str] = REFLECTION_WORDS) -> dict[str, int]:
    """How often each reflection word occurs in the completion (case-insensitive, whole words)."""
    found = Counter(w for w in _WORD.findall(completion.lower()) if w in words)
    return {w: found[w] for w in words if found[w]}


def reflection_rate(completions: Iterable[str]) -> float:
    """Share of completions with at least one reflection word."""
    items = list(completions)
    return sum(bool(reflection_counts(c)) for c in items) / max(1, len(items))


def aha_step(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """The first step from which `values` stay at or above `threshold` to the end of the run.

    >>> aha_step([1, 2, 3, 4, 5], [0.2, 0.9, 0.5, 0.95, 0.97], 0.9)
    4
    >>> aha_step([1, 2], [0.1, 0.2], 0.9) is None
    True
    """
    first = None
    for step, value in zip(steps, values):
        if value >= threshold:
            first = step if first is None else first
        else:
            first = None
    return first
