"""Synthetic reasoning tasks with verifiable answers, seeded, with a guaranteed-disjoint held-out split.

A problem belongs to the held-out split by a rule on its canonical key (a hash bucket), not by
which random draw produced it, so no seed, corpus size or generator call can ever leak a held-out
problem into training or pre-training data.

>>> task = TASKS.get("addition")
>>> p = task.make(random.Random(0), min_digits=2, max_digits=2)
>>> p.question, p.answer, p.think
('63+43', '106', '63+43:3+3=6;6+4:6+4=10')
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from r1lab.registry import Registry

HELDOUT_BUCKETS = 10  # one key in HELDOUT_BUCKETS is held out


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    think: str  # a worked chain of thought that reaches the answer
    key: str  # canonical identity: two problems with the same key are the same problem

    @property
    def heldout(self) -> bool:
        digest = hashlib.sha256(self.key.encode()).digest()
        return digest[0] % HELDOUT_BUCKETS == 0

    def row(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer, "key": self.key}

    def completion(self, worked: bool = True) -> str:
        """The answer in the R1 format: `<think>` + the worked solution + `</think>` (when
        `worked`), then `<answer>…</answer>`."""
        body = f"<think>{self.think}</think>" if worked else ""
        return f"{body}<answer>{self.answer}</answer>"


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[..., Problem]  # make(rng, min_digits=, max_digits=) -> Problem


TASKS: Registry[Task] = Registry("task", "synthetic reasoning task families")


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def make_addition(rng: random.Random, min_digits: int = 2, max_digits: int = 3) -> Problem:
    """Multi-digit addition, worked digit by digit from the right with explicit carries.

    Each step first restates what is left of both numbers, so the digits it adds are always the
    last ones before `+` and `:` (a scratchpad a small model can follow).
    """
    a, b = _number(rng, min_digits, max_digits), _number(rng, min_digits, max_digits)
    sa, sb = str(a), str(b)
    steps, carry = [], 0
    for i in range(max(len(sa), len(sb))):
        ra, rb = sa[: max(0, len(sa) - i)] or "0", sb[: max(0, len(sb) - i)] or "0"
        x, y = int(ra[-1]), int(rb[-1])
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        total = x + y + carry
        steps.append(f"{ra}+{rb}:{terms}={total}")
        carry = total // 10
    return Problem(f"{a}+{b}", str(a + b), ";".join(steps), key=f"add:{min(a, b)}+{max(a, b)}")


def make_linear(rng: random.Random, min_digits: int = 1, max_digits: int = 2) -> Problem:
    """Solve a*x+b=c for integer x, worked in two steps."""
    a = rng.randint(2, 9)
    x = _number(rng, min_digits, max_digits) * rng.choice((1, -1))
    b = rng.randint(1, 10**max_digits - 1) * rng.choice((1, -1))
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    think = f"{a}x={c}{'-' if b >= 0 else '+'}{abs(b)}={a * x},x={a * x}/{a}={x}"
    return Problem(f"{a}x{sign}{abs(b)}={c}", str(x), think, key=f"lin:{a},{b},{c}")


TASKS.register("addition", Task("addition", make_addition))
TASKS.register("linear", Task("linear", make_linear))


def generate(
    task: str,
    n: int,
    *,
    seed: int,
    split: str,
    min_digits: int = 2,
    max_digits: int = 3,
    exclude: set[str] | None = None,
) -> list[Problem]:
    """`n` distinct problems of `split` ("train" or "heldout"), reproducible from `seed`.

    Raises ValueError when the problem space is too small to give `n` distinct problems.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    make = TASKS.get(task).make
    rng = random.Random(f"{task}:{split}:{seed}")
    seen = set(exclude or ())
    out: list[Problem] = []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        p = make(rng, min_digits=min_digits, max_digits=max_digits)
        if p.heldout == (split == "heldout") and p.key not in seen:
            seen.add(p.key)
            out.append(p)
    raise ValueError(
        f"could only make {len(out)} distinct {split} problems of {task!r} with "
        f"{min_digits}-{max_digits} digits; ask for fewer or widen the digit range"
    )


def stream(
    task: str, *, seed: int, min_digits: int = 2, max_digits: int = 3
) -> Iterator[Problem]:
    """An endless stream of training-split problems (repeats allowed), for corpora."""
    make = TASKS.get(task).make
    rng = random.Random(f"{task}:stream:{seed}")
    while True:
        p = make(rng, min_digits=min_digits, max_digits=max_digits)
        if not p.heldout:
            yield p


def worked_examples(task: str, n: int, *, seed: int, min_digits: int = 2, max_digits: int = 3,
                    question_field: str = "question", completion_field: str = "completion") -> list[dict]:
    """`n` distinct training-split problems with their worked solutions in the R1 format,
    `<think>…</think><answer>…</answer>`, as (prompt, completion) rows: a cold-start set (R1's
    stage 1: a few readable chains of thought) for the synthetic tasks.

    >>> worked_examples("addition", 1, seed=0, min_digits=1, max_digits=1)[0]["completion"][:7]
    '<think>'
    """
    problems = generate(task, n, seed=seed, split="train", min_digits=min_digits, max_digits=max_digits)
    return [{question_field: p.question, completion_field: p.completion(), "answer": p.answer}
            for p in problems]
