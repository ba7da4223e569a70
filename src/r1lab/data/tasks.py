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

#: the second "language" of the `language` scenario: the same digits written as letters
LETTER_DIGITS = "abcdefghij"


def to_letters(text: str) -> str:
    """Write every digit of `text` in the second alphabet (0 -> a, ..., 9 -> j).

    >>> to_letters("34+6:4+6+1=11")
    'de+g:e+g+b=bb'
    """
    return text.translate(str.maketrans("0123456789", LETTER_DIGITS))


#: column totals a noisy writer gets wrong more often (`hard_slip_rate`): 13-17 (7+8, 9+6, ...)
HARD_TOTALS = range(13, 18)


def write_addition(a: int, b: int, *, rng: random.Random | None = None, slip_rate: float = 0.0,
                   hard_slip_rate: float | None = None, reflect: bool = False,
                   switch_at: int | None = None) -> tuple[str, str]:
    """(think, answer) for `a+b` worked as `make_addition` works it, with the habits of a
    noisy corpus.

    - `slip_rate`: each step's total is written one off (up or down) with this probability; the
      carry and the answer follow what was written, so a slip makes the answer wrong;
    - `hard_slip_rate` (None: `slip_rate`): the slip probability of a step whose total is in
      `HARD_TOTALS`; such a slip is always one too low (a habit, not noise: sharper sampling
      does not remove it, checking does);
    - `reflect`: every step is checked (`,check` after a right total; after a slip, `,wait,`
      and the step redone right, which the rest of the solution then follows);
    - `switch_at`: from this step on the steps are written in the second alphabet
      (`to_letters`); the answer stays in digits.

    >>> write_addition(345, 67)
    ('345+67:5+7=12;34+6:4+6+1=11;3+0:3+0+1=4', '412')
    >>> write_addition(345, 67, reflect=True)[0]
    '345+67:5+7=12,check;34+6:4+6+1=11,check;3+0:3+0+1=4,check'
    >>> write_addition(345, 67, switch_at=1)
    ('345+67:5+7=12;de+g:e+g+b=bb;d+a:d+a+b=e', '412')
    >>> rng = random.Random(3)
    >>> write_addition(345, 67, rng=rng, slip_rate=0.5)
    ('345+67:5+7=11;34+6:4+6+1=10;3+0:3+0+1=4', '401')
    >>> write_addition(345, 67, rng=random.Random(3), slip_rate=0.5, reflect=True)[0]
    '345+67:5+7=11,wait,5+7=12;34+6:4+6+1=10,wait,4+6+1=11;3+0:3+0+1=4,check'
    >>> write_addition(78, 7, rng=random.Random(0), hard_slip_rate=1.0, reflect=True)
    ('78+7:8+7=14,wait,8+7=15;7+0:7+0+1=8,check', '85')
    """
    sa, sb = str(a), str(b)
    steps, digits, carry = [], [], 0
    for i in range(max(len(sa), len(sb))):
        ra, rb = sa[: max(0, len(sa) - i)] or "0", sb[: max(0, len(sb) - i)] or "0"
        x, y = int(ra[-1]), int(rb[-1])
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        total = written = x + y + carry
        hard = hard_slip_rate is not None and total in HARD_TOTALS
        rate = hard_slip_rate if hard else slip_rate
        if rate and rng is not None and rng.random() < rate:
            written = total - 1 if hard or (total > 0 and rng.random() >= 0.5) else total + 1
        step = f"{ra}+{rb}:{terms}={written}"
        if reflect:
            step += ",check" if written == total else f",wait,{terms}={total}"
            written = total
        if switch_at is not None and i >= switch_at:
            step = to_letters(step)
        steps.append(step)
        digits.append(written % 10)
        carry = written // 10
    answer = (str(carry) if carry else "") + "".join(str(d) for d in reversed(digits))
    return ";".join(steps), str(int(answer))


def _operands(p: Problem) -> tuple[int, int]:
    a, b = p.question.split("+")
    return int(a), int(b)


def make_reflection(rng: random.Random, min_digits: int = 2, max_digits: int = 3) -> Problem:
    """Addition whose worked solution checks every step (the `reflection` scenario's task; its
    corpus also has unchecked solutions that slip, see `corpus_completion`). Same problems and
    split as `addition`.

    >>> make_reflection(random.Random(0), min_digits=2, max_digits=2).think
    '63+43:3+3=6,check;6+4:6+4=10,check'
    """
    p = make_addition(rng, min_digits, max_digits)
    think, _ = write_addition(*_operands(p), reflect=True)
    return Problem(p.question, p.answer, think, p.key)


TASKS.register("reflection", Task("reflection", make_reflection))
TASKS.register("language", Task("language", make_addition))  # its corpus mixes alphabets


def corpus_completion(p: Problem, rng: random.Random, *, slip_rate: float = 0.0,
                      hard_slip_rate: float | None = None, reflect_fraction: float = 0.0,
                      mix_fraction: float = 0.0, think_fraction: float = 1.0) -> str:
    """One pre-training completion of an addition problem, drawn with a noisy corpus's habits:
    bare (no `<think>`) with probability 1 - `think_fraction`; else worked, its steps slipping at
    `slip_rate` (`hard_slip_rate` on hard columns), checked with probability `reflect_fraction`, switching into the second alphabet
    at a random step with probability `mix_fraction` (when it has more than one step).

    >>> p = make_addition(random.Random(0), min_digits=2, max_digits=2)
    >>> corpus_completion(p, random.Random(0), mix_fraction=1.0)
    '<think>63+43:3+3=6;g+e:g+e=ba</think><answer>106</answer>'
    """
    if rng.random() >= think_fraction:
        return p.completion(worked=False)
    if not (slip_rate or hard_slip_rate or reflect_fraction or mix_fraction):  # no habit: no further draw, so
        return p.completion()  # the default demo's corpus is the same as it always was
    a, b = _operands(p)
    n_steps = max(len(str(a)), len(str(b)))
    reflect = bool(reflect_fraction) and rng.random() < reflect_fraction
    mixed = n_steps > 1 and bool(mix_fraction) and rng.random() < mix_fraction
    switch = rng.randint(1, n_steps - 1) if mixed else None
    think, answer = write_addition(a, b, rng=rng, slip_rate=slip_rate, hard_slip_rate=hard_slip_rate,
                                   reflect=reflect, switch_at=switch)
    return f"<think>{think}</think><answer>{answer}</answer>"


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
