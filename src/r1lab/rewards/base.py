"""The one shape every reward has: `fn(completion, row, **kwargs) -> Score`.

A reward is a plain function registered under a name in `REWARDS`; the trainer and
`r1lab score` look it up by the name in the config. A name of the form `package.module:function`
loads a user's function with the same signature instead.

>>> @REWARDS.register("shouting")
... def shouting(completion, row, **kwargs):
...     return Score(float(completion.isupper()))
>>> get_reward("shouting")("HELLO", {}).value
1.0
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from r1lab.registry import Registry


@dataclass
class Score:
    """A reward for one completion: the number the trainer uses, and what explains it."""

    value: float
    metrics: dict[str, Any] = field(default_factory=dict)


class RewardFn(Protocol):
    def __call__(self, completion: str, row: dict, **kwargs: Any) -> Score: ...


REWARDS: Registry[RewardFn] = Registry("reward", "fn(completion, row, **kwargs) -> Score")


def load_user_function(path: str) -> Callable[..., Any]:
    """Import `package.module:function` (the module must be importable: on sys.path)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path} is not callable")
    return obj


def get_reward(name: str) -> RewardFn:
    """A registered reward by name, or a user function by `module:function` import path."""
    if ":" in name:
        fn = load_user_function(name)
        return _as_score(fn)
    return REWARDS.get(name)


def _as_score(fn: Callable[..., Any]) -> RewardFn:
    """Let a user function return a bare number, or a (value, metrics) pair, as well as a Score."""

    def wrapped(completion: str, row: dict, **kwargs: Any) -> Score:
        out = fn(completion, row, **kwargs)
        if isinstance(out, Score):
            return out
        if isinstance(out, tuple):
            return Score(float(out[0]), dict(out[1]))
        return Score(float(out))

    wrapped.__name__ = getattr(fn, "__name__", "user_reward")
    return wrapped
