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


# --- benchmark formats: HumanEval check functions, MBPP test_list, stdin/stdout, bare code ---

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from r1lab.rewards.code import check_code_rows, find_program  # noqa: E402
from r1lab.rewards.humaneval import rewrite_check, run_check  # noqa: E402

HE_PROMPT = (
    "from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n"
    '    """ True iff the running sum of operations ever drops below zero.\n'
    "    >>> below_zero([1, 2, -4, 5])\n    True\n    \"\"\"\n"
)
# HumanEval's own shape: METADATA, `def check(candidate)`, here with a loop of 4 asserts and a
# helper the prompt does not have (the expected value is computed by the check itself)
HE_TEST = (
    "METADATA = {'author': 'test'}\n\n\ndef check(candidate):\n"
    "    assert candidate([]) == False\n"
    "    assert candidate([1, 2, -4, 5]) == True\n"
    "    for n in range(1, 5):\n"
    "        ops = [n, -n - 1]\n"
    "        assert candidate(ops) is (sum(ops) < 0)\n"
)
HE_ROW = {"prompt": HE_PROMPT, "code_prefix": HE_PROMPT, "tests": HE_TEST, "entry_point": "below_zero"}
HE_RIGHT = "    total = 0\n    for op in operations:\n        total += op\n        if total < 0:\n            return True\n    return False\n"
MBPP_ROW = {"prompt": "Write a function to add two numbers.",
            "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]}  # fmt: skip
STDIO_ROW = {"prompt": "Print a + b.", "tests": [{"input": "1 2\n", "output": "3\n"},
                                                 {"input": "5 5\n", "output": "10"}]}  # fmt: skip
ALWAYS_EQUAL = "class Yes:\n    def __eq__(self, o): return True\n    def __bool__(self): return True\n    __hash__ = None\n"


def test_rewrite_check_counts_each_assert_statement():
    src, n = rewrite_check(HE_TEST)
    assert n == 3 and "assert " not in src and "__r1_assert(lambda: candidate([]) == False, 0)" in src


def test_humaneval_check_counts_asserts_in_a_loop():
    res = run_check(HE_PROMPT + HE_RIGHT, HE_TEST, "below_zero", HE_PROMPT)
    # 2 asserts + 4 loop iterations, 6 calls recorded
    assert (res["passed"], res["total"], res["calls"]) == (6, 6, 6)
    wrong = run_check(HE_PROMPT + "    return True\n", HE_TEST, "below_zero", HE_PROMPT)
    # True is right for [1, 2, -4, 5] and for every [n, -n - 1] (sum -1 < 0): 5 of 6
    assert (wrong["passed"], wrong["total"]) == (5, 6)


def test_humaneval_all_or_nothing_and_partial():
    wrong = HE_ROW | {"tests": HE_TEST}
    assert code("    return True\n", wrong).value == pytest.approx(5 / 6)
    assert code("    return True\n", wrong, scoring="all").value == 0.0
    assert code(HE_RIGHT, HE_ROW, scoring="all").value == 1.0


@pytest.mark.parametrize(
    "cheat",
    [
        ALWAYS_EQUAL + "def below_zero(operations):\n    return Yes()",
        "import sys\ndef below_zero(operations):\n    return None\nsys.exit(0)",
        "import builtins\nbuiltins.AssertionError = Exception\ndef below_zero(operations):\n    return 7",
        "class B(int):\n    def __eq__(self, o): return True\ndef below_zero(operations):\n    return B(0)",
    ],
    ids=["always_equal", "sys_exit", "patch_assert", "int_subclass"],
)
def test_humaneval_faking_success_scores_zero(cheat):
    s = code(fenced(cheat), HE_ROW)
    assert s.value == 0.0 and s.metrics["program"] == "answer"


def test_humaneval_forged_call_records_are_refused():
    # the forger writes the right values for calls 0..5 on every fd: each duplicates the
    # runner's own line, so both are refused and nothing passes
    forge = (
        "import os, json\nfor fd in range(3, 30):\n    for c in range(6):\n        try:\n"
        "            os.write(fd, (json.dumps({'c': c, 'a': '0', 'v': True}) + '\\n').encode())\n"
        "        except OSError:\n            pass\n"
    )
    res = run_check(forge + "def below_zero(operations):\n    return False", HE_TEST, "below_zero")
    assert res["passed"] == 0


def test_where_the_program_is_found():
    fence = fenced("def below_zero(operations):\n    return False")
    src, where = find_program(fence, HE_ROW, "humaneval")
    assert where == "answer" and src.startswith(HE_PROMPT)  # prompt's imports before it
    assert find_program(HE_RIGHT, HE_ROW, "humaneval")[1] == "continuation"
    assert find_program("def add(a, b):\n    return a + b", MBPP_ROW, "mbpp") == ("def add(a, b):\n    return a + b", "bare")
    assert find_program("def add(a, b):\n    return a + b", MBPP_ROW, "mbpp", program="answer") == (None, "answer")
    s = code("I think the sum is a plus b.", MBPP_ROW)
    assert s.value == 0.0 and s.metrics["no_code"] is True


def test_no_tests_shows_in_metrics_and_wrong_key_is_an_error():
    s = code(fenced("def add(a, b): return a + b"), {"checks": MBPP_ROW["tests"]})
    assert s.value == 0.0 and s.metrics["no_tests"] is True
    with pytest.raises(ValueError, match="no row has a 'tests' field .*tests_key"):
        check_code_rows([{"test_list": ["assert f() == 1"]}, {"test_list": []}])
    check_code_rows([{"test_list": ["assert f() == 1"]}], tests_key="test_list")
    with pytest.raises(ValueError, match="row 0: a HumanEval row needs 'entry_point'"):
        check_code_rows([{"tests": HE_TEST, "code_format": "humaneval"}])


def test_mbpp_setup_code_runs_before_the_tests():
    row = {"test_list": ["assert add(2, 3) == 5 + OFFSET"], "test_setup_code": "OFFSET = 1"}
    assert code("def add(a, b):\n    return a + b + 1", row, tests_key="test_list").value == 1.0


def _r1lab_score(tmp_path, rows, *args):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "r1lab.cli", "score", "--reward", "code",
                           "--input", str(src), "--output", str(dst), "--workers", "4", *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    out = [json.loads(line) for line in dst.read_text().splitlines()] if proc.returncode == 0 else []
    return proc, out


def test_r1lab_score_on_benchmark_format_rows(tmp_path):
    """`r1lab score --reward code`: HumanEval, MBPP and stdin/stdout rows as their datasets
    publish them (HumanEval's `test` via --tests-key), fenced and bare completions."""
    right_fn = "def add(a, b):\n    return a + b"
    rows = [
        HE_ROW | {"completion": HE_RIGHT},  # a base model's function body
        HE_ROW | {"completion": "    return True\n"},
        HE_ROW | {"completion": fenced(ALWAYS_EQUAL + "def below_zero(operations):\n    return Yes()")},
        HE_ROW | {"completion": fenced(HE_PROMPT + HE_RIGHT)},  # a chat model's whole function
        MBPP_ROW | {"completion": fenced(right_fn)},
        MBPP_ROW | {"completion": fenced("def add(a, b):\n    return a - b")},  # 0 of 3
        MBPP_ROW | {"completion": fenced(ALWAYS_EQUAL + "def add(a, b):\n    return Yes()")},
        MBPP_ROW | {"completion": right_fn},  # bare, no fence, no <answer>
        STDIO_ROW | {"completion": fenced("a, b = map(int, input().split())\nprint(a + b)")},
        STDIO_ROW | {"completion": fenced("a, b = map(int, input().split())\nprint(a * b)")},
        STDIO_ROW | {"completion": "<think>read, add</think>a, b = map(int, input().split())\nprint(a + b)"},
    ]
    proc, out = _r1lab_score(tmp_path, rows)
    assert proc.returncode == 0, proc.stderr
    got = [r["rewards"]["code"] for r in out]
    assert got[:4] == [1.0, pytest.approx(5 / 6), 0.0, 1.0]
    assert got[4:8] == [1.0, 0.0, 0.0, 1.0]
    assert got[8:] == [1.0, 0.0, 1.0]
    m = out[0]["reward_metrics"]
    assert (m["code/passed"], m["code/total"], m["code/format"]) == (6, 6, "humaneval")
    assert out[7]["reward_metrics"]["code/program"] == "bare"


@pytest.mark.slow
def test_r1lab_score_on_a_published_humaneval_row_and_a_wrong_key(tmp_path):
    # the published HumanEval row as it is: `test`, `prompt`, `entry_point`
    raw = {"task_id": "HumanEval/x", "prompt": HE_PROMPT, "test": HE_TEST,
           "entry_point": "below_zero", "completion": HE_RIGHT}  # fmt: skip
    proc, out = _r1lab_score(tmp_path, [raw], "--tests-key", "test")
    assert proc.returncode == 0, proc.stderr
    assert out[0]["rewards"]["code"] == 1.0
    proc, out = _r1lab_score(tmp_path, [raw])  # read as training reads it: test -> tests
    assert proc.returncode == 0 and out[0]["rewards"]["code"] == 1.0, proc.stderr
    proc, _ = _r1lab_score(tmp_path, [raw], "--tests-key", "checks")  # a wrong key: an error, not zeros
    assert proc.returncode != 0 and "no row has a 'checks' field" in proc.stderr + proc.stdout


def test_a_training_config_with_a_wrong_tests_key_fails_before_the_run():
    from r1lab.config import ConfigError, RunConfig
    from r1lab.data.validate import check_reward_rows

    cfg = RunConfig.model_validate({"rewards": {"components": [
        {"name": "code", "kwargs": {"tests_key": "tests"}}]}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"rewards.components.0.kwargs: no row has a 'tests' field"):
        check_reward_rows([{"prompt": "p", "test_list": ["assert f() == 1"]}], cfg)
    check_reward_rows([{"prompt": "p", "tests": ["assert f() == 1"]}], cfg)


def test_humaneval_setup_helpers_reach_both_runs():
    check = "def check(candidate):\n    for x in CASES:\n        assert candidate(x) == twice(x)\n"
    row = {"tests": check, "entry_point": "f", "test_setup": "CASES = [1, 2, 3]\ndef twice(x):\n    return 2 * x"}
    s = code("def f(x):\n    return x + x", row)
    assert (s.value, s.metrics["passed"], s.metrics["total"]) == (1.0, 3, 3)
