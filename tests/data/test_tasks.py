import random
import re

import pytest

from r1lab.data.tasks import TASKS, generate, make_addition, stream


@pytest.mark.parametrize("task", ["addition", "linear"])
def test_heldout_split_shares_no_problem_with_training(task):
    train = generate(task, 3000, seed=5, split="train", min_digits=1, max_digits=2)
    heldout = generate(task, 150, seed=5, split="heldout", min_digits=1, max_digits=2)
    assert len({p.key for p in train}) == 3000 and len({p.key for p in heldout}) == 150
    assert not {p.key for p in train} & {p.key for p in heldout}
    assert all(not p.heldout for p in train) and all(p.heldout for p in heldout)


def test_pretraining_stream_never_yields_a_heldout_problem():
    heldout = {p.key for p in generate("addition", 100, seed=0, split="heldout")}
    s = stream("addition", seed=0)
    seen = {next(s).key for _ in range(5000)}
    assert not seen & heldout


def test_commuted_addition_is_the_same_problem():
    a = make_addition(random.Random(1))
    x, y = a.question.split("+")
    assert a.key == f"add:{min(int(x), int(y))}+{max(int(x), int(y))}"


def test_generation_is_reproducible_and_seed_dependent():
    a = [p.key for p in generate("addition", 50, seed=1, split="train")]
    b = [p.key for p in generate("addition", 50, seed=1, split="train")]
    c = [p.key for p in generate("addition", 50, seed=2, split="train")]
    assert a == b and a != c


def test_worked_addition_solution_is_correct_arithmetic():
    rng = random.Random(0)
    for _ in range(300):
        p = make_addition(rng, min_digits=1, max_digits=4)
        x, y = map(int, p.question.split("+"))
        assert int(p.answer) == x + y
        digits, carry = [], 0
        for step in p.think.split(";"):
            rest, calc = step.split(":")
            lhs, total = calc.split("=")
            terms = list(map(int, lhs.split("+")))
            assert sum(terms) == int(total)
            assert terms[2:] == ([carry] if carry else [])
            digits.append(int(total) % 10)
            carry = int(total) // 10
        assert int(("1" if carry else "") + "".join(map(str, reversed(digits)))) == x + y


def test_hand_worked_example():
    p = TASKS.get("addition").make(random.Random(0), min_digits=2, max_digits=2)
    assert (p.question, p.answer) == ("63+43", "106")
    assert p.think == "63+43:3+3=6;6+4:6+4=10"


def test_linear_solution_solves_the_equation():
    rng = random.Random(3)
    for _ in range(200):
        p = TASKS.get("linear").make(rng)
        a, b, c = map(int, re.fullmatch(r"(\d)x([+-]\d+)=(-?\d+)", p.question).groups())
        assert a * int(p.answer) + b == c


def test_too_small_problem_space_is_a_clear_error():
    with pytest.raises(ValueError, match="could only make"):
        generate("addition", 10_000, seed=0, split="heldout", min_digits=1, max_digits=1)


def test_docstring_examples():
    import doctest

    import r1lab.data.tasks

    result = doctest.testmod(r1lab.data.tasks)
    assert result.attempted >= 2 and result.failed == 0
