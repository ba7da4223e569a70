"""Named registries for swappable components (rewards, advantage estimators, losses, ...).

One registry per kind, one fixed call signature per kind, so the trainer looks components up by
the name in the config and never branches on algorithm names itself.

>>> ACTIVATIONS = Registry("activation")
>>> @ACTIVATIONS.register("double")
... def double(x):
...     return 2 * x
>>> ACTIVATIONS.get("double")(3)
6
>>> ACTIVATIONS.get("tripple")
Traceback (most recent call last):
...
r1lab.registry.UnknownComponentError: unknown activation 'tripple'; valid: double
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: every registry ever created, by kind, so `r1lab list` can show them all
REGISTRIES: dict[str, Registry] = {}


class UnknownComponentError(KeyError):
    """A name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> component map that refuses duplicates and explains failed look-ups."""

    def __init__(self, kind: str, description: str = "") -> None:
        if kind in REGISTRIES:
            raise ValueError(f"a registry for {kind!r} already exists")
        self.kind = kind
        self.description = description
        self._items: dict[str, T] = {}
        REGISTRIES[kind] = self

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name`; usable as `@registry.register("name")`."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownComponentError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
