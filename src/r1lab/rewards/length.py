"""Length shaping: DAPO's soft overlong punishment and the cosine length reward.

Lengths are in tokens when the row carries `completion_tokens` (the trainer knows them), else
in characters of the completion.
"""

from __future__ import annotations

import math
from typing import Any

from r1lab.rewards.base import REWARDS, Score
from r1lab.rewards.math import accuracy


def _length(completion: str, row: dict | None) -> int:
    if row and row.get("completion_tokens") is not None:
        return int(row["completion_tokens"])
    return len(completion)


@REWARDS.register("overlong")
def overlong(
    completion: str, row: dict | None = None, max_length: int = 4096, cache_length: int = 512,
    **_: Any,
) -> Score:  # fmt: skip
    """DAPO soft overlong punishment: 0 up to `max_length - cache_length`, then a linear ramp
    down to -1 at `max_length`, and -1 beyond.

    >>> [overlong("x" * n, max_length=100, cache_length=20).value for n in (80, 90, 100, 150)]
    [0.0, -0.5, -1.0, -1.0]
    """
    n = _length(completion, row)
    free = max_length - cache_length
    if n <= free:
        value = 0.0
    elif n <= max_length:
        value = (free - n) / cache_length
    else:
        value = -1.0
    return Score(value, {"length": n})


@REWARDS.register("cosine_length")
def cosine_length(
    completion: str,
    row: dict,
    max_length: int = 1000,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    **kwargs: Any,
) -> Score:
    """Cosine-scheduled length reward (Yeo et al., 2025): a correct answer earns more when short,
    a wrong one is punished less when long, so the model keeps thinking when it is unsure.

    >>> row = {"answer": "4"}
    >>> cosine_length("<think>a</think><answer>4</answer>", row, max_length=68).value
    0.75
    >>> cosine_length("<think>a</think><answer>5</answer>", row, max_length=68).value
    -0.75
    """
    correct = accuracy(completion, row, **kwargs).value > 0
    lo, hi = (
        (min_value_correct, max_value_correct) if correct else (max_value_wrong, min_value_wrong)
    )
    progress = min(_length(completion, row) / max_length, 1.0)
    value = lo + 0.5 * (hi - lo) * (1.0 + math.cos(progress * math.pi))
    return Score(value, {"correct": correct})


#: the rewards whose `max_length` is a completion length, tied to `rollout.max_new_tokens`
LENGTH_REWARDS = ("overlong", "cosine_length")


def tie_lengths(cfg: Any) -> None:
    """Fill in length rewards' `max_length` from `rollout.max_new_tokens` where the config does
    not set it (and, for `overlong`, `cache_length` as `max_length // 5`: DAPO's 4,096 of
    20,480), so lowering `max_new_tokens` moves them too; a cache as long as the limit is an
    error. Called when a RunConfig is validated; the filled-in values are saved with the run.

    >>> from types import SimpleNamespace as NS
    >>> comp = NS(name="overlong", kwargs={})
    >>> tie_lengths(NS(rollout=NS(max_new_tokens=1000), rewards=NS(components=[comp])))
    >>> comp.kwargs
    {'max_length': 1000, 'cache_length': 200}
    """
    for i, comp in enumerate(cfg.rewards.components):
        if comp.name not in LENGTH_REWARDS:
            continue
        kw = comp.kwargs
        if "max_length" not in kw:
            kw["max_length"] = cfg.rollout.max_new_tokens
            if comp.name == "overlong":
                kw.setdefault("cache_length", max(1, kw["max_length"] // 5))
        if comp.name == "overlong" and kw.get("cache_length", 512) >= kw["max_length"]:
            raise ValueError(f"rewards.components.{i}.kwargs.cache_length: {kw.get('cache_length', 512)} "
                             f"is not below max_length {kw['max_length']} (the soft punishment would "
                             "start before any completion)")
