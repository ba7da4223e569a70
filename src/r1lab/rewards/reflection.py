"""Self-verification as a measurement: does a completion's thinking check or re-evaluate itself?

`reflection` is meant for weight 0 in `rewards.components`: it changes no advantage, but the
trainer logs every component's mean, so `reward/reflection` in metrics.jsonl is the per-step
share of completions that reflect (all G*B of them, not the few logged samples). The words are
`r1lab.analysis.behaviour.REFLECTION_WORDS` ("wait", "check", "verify", ...), searched in the
thinking only: an answer cannot reflect.
"""

from __future__ import annotations

from typing import Any

from r1lab.analysis.behaviour import reflection_counts, think_text
from r1lab.rewards.base import REWARDS, Score


def reflects(completion: str) -> bool:
    """Whether the `<think>` block holds a reflection word.

    >>> reflects("<think>5+7=13,wait,5+7=12</think><answer>12</answer>")
    True
    >>> reflects("<think>5+7=12</think><answer>12, check</answer>"), reflects("<answer>12</answer>")
    (False, False)
    """
    return bool(reflection_counts(think_text(completion)))


@REWARDS.register("reflection")
def reflection(completion: str, row: dict | None = None, **_: Any) -> Score:
    """1.0 when the thinking checks or re-evaluates (`reflects`), else 0.0; `metrics["waits"]`
    counts the re-evaluations ("wait").

    >>> s = reflection("<think>2+2=5,wait,2+2=4,check</think><answer>4</answer>")
    >>> s.value, s.metrics
    (1.0, {'waits': 1})
    """
    words = reflection_counts(think_text(completion))
    return Score(float(bool(words)), {"waits": words.get("wait", 0)})
