"""The code reward judges results itself: faking success earns nothing."""

import pytest

from r1lab.rewards.code import code, decode, extract_code, run_tests, split_assert

ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]


def fenced(src: str) -> str:
    return f"<think>easy</think><answer>```python\n{src}\n```</answer>"


def test_correct_and_partly_correct_programs():
    assert code(fenced("def add(a, b):\n    return a + b"), {"tests": ADD_TESTS}).value == 1.0
    wrong = code(fenced("def add(a, b):\n    return 5"), {"tests": ADD_TESTS})
    assert wrong.value == pytest.approx(1 / 3) and wrong.metrics["passed"] == 1


def test_no_code_scores_zero():
    s = code("<think>```python\ndef add(a, b): return a + b\n```</think>", {"tests": ADD_TESTS})
    assert s.value == 0.0 and s.metrics["no_code"] is True


def test_extract_code_takes_the_last_block_of_the_answer():
    assert extract_code("<answer>```py\nx = 1\n```\n```python\nx = 2\n```</answer>") == "x = 2\n"


def test_stdio_tests_compare_output_outside():
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "11"}]
    res = run_tests("a, b = map(int, input().split())\nprint(a + b)", tests)
    assert (res["passed"], res["total"]) == (1, 2)


def test_split_assert_keeps_comparison_outside():
    t = split_assert(__import__("ast").parse("assert sorted(f(x)) == [1, 2]").body[0])
    assert (t.probes, t.check) == (["f(x)"], "sorted(__p0) == [1, 2]")


def test_decode_round_trip_types():
    v = {"t": [{"i": "1"}, {"s": [{"f": "0.5"}]}, {"d": [["k", {"l": [True, None]}]]}]}
    assert decode(v) == (1, {0.5}, {"k": [True, None]})


@pytest.mark.parametrize(
    "cheat",
    [
        "import sys\ndef add(a, b): return a + b\nsys.exit(0)",
        "import os\nos._exit(0)",
        "class Yes:\n    def __eq__(self, other): return True\n    __hash__ = None\ndef add(a, b): return Yes()",
        "import builtins\nbuiltins.AssertionError = Exception\ndef add(a, b): return 7",
        "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b): return I(0)",
        'print(\'{"t": 0, "p": 0, "v": {"i": "5"}}\')\nprint(\'ALL TESTS PASSED\')\ndef add(a, b): return 7',
    ],
    ids=[
        "sys_exit",
        "os_exit",
        "equal_to_everything",
        "patch_builtins",
        "int_subclass",
        "fake_output",
    ],
)
def test_faking_success_scores_zero(cheat):
    s = code(fenced(cheat), {"tests": ADD_TESTS})
    assert s.value == 0.0


def test_equal_to_everything_inside_a_generator_fails():
    cheat = "class Yes:\n    def __eq__(self, o): return True\ndef sq(x): return Yes()"
    res = run_tests(cheat, ["assert all(sq(i) == i * i for i in range(4))"])
    assert res["passed"] == 0
    res = run_tests("def sq(x): return x * x", ["assert all(sq(i) == i * i for i in range(4))"])
    assert res["passed"] == 1


def test_forged_result_line_on_the_private_fd_is_a_conflict():
    # the forger guesses the value right, so the runner's own line duplicates it: both discarded
    cheat = (
        "import os, json\nfor fd in range(3, 20):\n    try:\n"
        "        os.write(fd, (json.dumps({'t': 0, 'p': 0, 'v': {'i': '5'}}) + '\\n').encode())\n"
        "    except OSError:\n        pass\ndef add(a, b): return a + b"
    )
    res = run_tests(cheat, ["assert add(2, 3) == 5", "assert add(1, 1) == 2"])
    assert res["passed"] == 1


def test_infinite_loop_in_one_test_fails_that_test_only():
    src = "def f(x):\n    while x == 0:\n        pass\n    return x"
    res = run_tests(
        src,
        ["assert f(0) == 0", "assert f(3) == 3"],
    )
    assert (res["passed"], res["total"]) == (1, 2)
