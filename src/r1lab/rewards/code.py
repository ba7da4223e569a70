"""Code execution reward: the tests a model-written program passes, judged outside it.

Row contract (the fields this reward reads; `r1lab.data` turns HumanEval / MBPP / stdin-stdout
rows into these, and a row that lacks them is an error before the run, see `check_code_row`):

* `tests` (the `tests_key` option): one of
    - a list of assert strings (MBPP `test_list`): `"assert add(2, 3) == 5"`; several
      statements per string are allowed, statements other than asserts run as setup;
    - a list of stdin/stdout pairs `{"input": str, "output": str}` (APPS, CodeContests,
      LiveCodeBench): output compared line by line, trailing whitespace ignored;
    - one HumanEval check program (a string with `def check(candidate): ...`); it needs
      `entry_point`. Every `assert` it executes counts as one test, inside loops too.
* `entry_point` (str, HumanEval): the function `check` is called with.
* `code_prefix` (str, optional, HumanEval's `prompt`): the code a completion continues; with
  `program: continuation` the program is `code_prefix + completion`, and its imports and helper
  functions are put before a full program found in a fence too.
* `test_setup` (str, optional; MBPP's own `test_setup_code` / `test_imports` are read too):
  run before the tests. A HumanEval row without `code_prefix` uses HumanEval's `prompt`, so
  the published rows score as they are with `tests_key: test`.
* `code_format` (str, optional): `humaneval` | `mbpp` | `stdio`; when absent it is inferred
  (`entry_point` -> humaneval, dict tests -> stdio, else mbpp). It picks the default of
  `program` (where the program is): `answer` (the last fence in `<answer>`, else the answer
  block, else the last fence anywhere), `bare` (as `answer`, else the whole completion outside
  `<think>`), `continuation` (`code_prefix` + completion), `auto` (humaneval: a fenced or
  answered program if it defines `entry_point`, else continuation; mbpp/stdio: bare).

Scoring: `scoring: partial` (fraction of tests passed, the default) or `all` (1.0 iff every
test passes, as benchmarks count pass@1). Metrics `no_code` / `no_tests` say when there was no
program or no test to run; either scores 0.

The expected values never enter the sandbox. Each assert is split: the parts that call the
model's code (`add(2, 3)`) become *probes*, evaluated in the sandbox and sent back as plain
builtin values; the rest (`__p0 == 5`) is evaluated here, on those plain values, with a small
set of safe builtins. A HumanEval check function is run twice: once in the sandbox with the
model's function, where only the candidate's return values are recorded, and once in a second
sandbox with no model code in it, where `candidate` replays those plain values and the check's
own asserts are counted. So the program's exit status, its prints, `sys.exit(0)`, a patched
`assert` or an object whose `__eq__` always says yes, cannot pass a test. A program that
rewrites the runner in its own memory can report any value it likes for a probe, but it still
has to know the right value, which is solving the task.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.rewards.base import REWARDS, Score
from r1lab.rewards.humaneval import run_check
from r1lab.rewards.parsing import last_block, strip_think
from r1lab.rewards.sandbox import Limits, run_python

_RUNNER = Path(__file__).with_name("_runner.py").read_text()
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)
_SAFE = {
    f.__name__: f
    for f in (abs, all, any, bool, dict, divmod, enumerate, float, frozenset, int, isinstance,
              len, list, map, max, min, pow, range, reversed, round, set, sorted, str, sum,
              tuple, zip, complex)
} | {"math": math, "True": True, "False": False, "None": None}  # fmt: skip
_RECURSE = (ast.Compare, ast.BinOp, ast.BoolOp, ast.UnaryOp, ast.IfExp, ast.Tuple, ast.List,
            ast.Set, ast.Dict, ast.Subscript, ast.Slice)  # fmt: skip


def extract_code(completion: str) -> str | None:
    """The program: last fenced block in the answer (else the whole answer), thinking ignored.

    >>> extract_code("<think>```python\\nbad()\\n```</think><answer>```python\\ndef f(): return 1\\n```</answer>")
    'def f(): return 1\\n'
    """
    visible = strip_think(completion)
    answer = last_block(visible, "answer")
    text = answer if answer is not None else visible
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[-1]
    return answer.strip() or None if answer is not None else None


PROGRAMS = ("auto", "answer", "bare", "continuation")
FORMATS = ("humaneval", "mbpp", "stdio")
_STOPS = ("\nif __name__", "\n```")  # where a function completion's own code ends


def _parses(src: str) -> bool:
    try:
        ast.parse(src)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines(src: str, name: str) -> bool:
    try:
        body = ast.parse(src).body
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == name
               for n in body)  # fmt: skip


def bare_code(completion: str) -> str | None:
    """The fenced or answered program, else the whole text outside `<think>` if it is Python.

    >>> bare_code("<think>hmm</think>def f(x):\\n    return x + 1")
    'def f(x):\\n    return x + 1'
    >>> bare_code("The answer is f(x) = x + 1.") is None
    True
    """
    found = extract_code(completion)
    if found is not None:
        return found
    visible = strip_think(completion).strip()
    return visible if visible and _parses(visible) else None


def continuation(completion: str, prefix: str) -> str:
    """`prefix + completion`, the completion cut where a function body's own code ends.

    >>> continuation("    return a + b\\n\\nif __name__ == '__main__':\\n    print(1)", "def add(a, b):\\n")
    'def add(a, b):\\n    return a + b\\n'
    """
    text = completion.split("</think>")[-1] if "</think>" in completion else completion
    for stop in _STOPS:
        text = text.split(stop)[0]
    return prefix + text.rstrip() + "\n"


def code_format(row: dict, tests: Any) -> str:
    """The row's `code_format`, else inferred: `entry_point` -> humaneval, dict tests -> stdio.

    >>> code_format({"entry_point": "f"}, "def check(candidate): ..."), code_format({}, [{"input": "", "output": "1"}])
    ('humaneval', 'stdio')
    """
    fmt = row.get("code_format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"code_format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    if row.get("entry_point") or (isinstance(tests, str) and "def check(" in tests):
        return "humaneval"
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        return "stdio"
    return "mbpp"


def find_program(completion: str, row: dict, fmt: str, program: str = "auto") -> tuple[str | None, str]:
    """(program, where it was found): `answer`, `bare`, `continuation`, or None."""
    if program not in PROGRAMS:
        raise ValueError(f"program {program!r} is not one of {', '.join(PROGRAMS)}")
    prefix = _prefix(row, fmt)
    if program == "answer":
        return extract_code(completion), "answer"
    if program == "bare":
        return bare_code(completion), "bare"
    if program == "continuation":
        return continuation(completion, prefix), "continuation"
    if fmt != "humaneval":
        return bare_code(completion), "bare"
    entry = str(row.get("entry_point") or "")
    found = bare_code(completion)
    if found is not None and _defines(found, entry):  # a whole function: the prompt's imports
        return (prefix + "\n\n" + found if prefix else found), "answer"  # and helpers first
    return continuation(completion, prefix), "continuation"


def _prefix(row: dict, fmt: str) -> str:
    """`code_prefix`; for a HumanEval row without one, HumanEval's own `prompt` is that code."""
    if row.get("code_prefix") is not None:
        return str(row["code_prefix"])
    return str(row.get("prompt") or "") if fmt == "humaneval" else ""


def _setup(row: dict) -> str:
    """`test_setup`, or MBPP's own `test_setup_code` / `test_imports`."""
    for key in ("test_setup", "test_setup_code"):
        if row.get(key):
            return str(row[key])
    imports = row.get("test_imports")
    return "\n".join(imports) if isinstance(imports, list) else ""


def check_code_rows(rows: list[dict], tests_key: str = "tests", **_: Any) -> None:
    """Checked before a run: the rows have `tests_key` (a wrong key would otherwise score every
    sample 0), and the tests that are there are runnable. A row without tests scores 0 with
    `no_tests` in its metrics.

    >>> check_code_rows([{"test": "def check(candidate): ...", "entry_point": "f"}])
    Traceback (most recent call last):
    ...
    ValueError: no row has a 'tests' field for the code reward (row 0 has: test, entry_point); set the reward's tests_key
    """
    if rows and not any(row.get(tests_key) is not None for row in rows):
        raise ValueError(f"no row has a {tests_key!r} field for the code reward (row 0 has: "
                         f"{', '.join(map(str, rows[0])) or 'none'}); set the reward's tests_key")  # fmt: skip
    for i, row in enumerate(rows):
        if row.get(tests_key) is not None:
            _tests_of(row, tests_key, f"row {i}")


def _tests_of(row: dict, tests_key: str, where: str = "row") -> Any:
    """The row's tests as a list (HumanEval: the check source), None if it has none."""
    tests = row.get(tests_key)
    if tests is None:
        return None
    fmt = code_format(row, tests)
    if fmt == "humaneval":
        if not isinstance(tests, str) or "def check(" not in tests:
            raise ValueError(f"{where}: HumanEval {tests_key!r} must be a `def check(candidate)` program")
        if not row.get("entry_point"):
            raise ValueError(f"{where}: a HumanEval row needs 'entry_point' (the function check is called with)")
    elif isinstance(tests, str):
        tests = [tests]
    elif not isinstance(tests, list):
        raise ValueError(f"{where}: {tests_key!r} must be a list of asserts or stdin/stdout pairs")
    if fmt == "stdio" and not all(isinstance(t, dict) and "output" in t for t in tests):
        raise ValueError(f"{where}: each stdin/stdout test needs 'output' (and 'input')")
    return tests


@dataclass
class AssertTest:
    source: str
    probes: list[str]  # expressions evaluated in the sandbox
    check: str  # expression over __p0.. evaluated here


def split_assert(node: ast.Assert) -> AssertTest:
    """Move the calls into the model's code to the sandbox; keep the comparison here.

    >>> t = split_assert(ast.parse("assert abs(f(1.5) - 2.25) < 1e-6").body[0])
    >>> t.probes, t.check
    (['f(1.5)'], 'abs(__p0 - 2.25) < 1e-06')
    """
    probes: list[str] = []
    check = _Rewriter(probes, frozenset(), "__p").visit(node.test)
    return AssertTest(ast.unparse(node), probes, ast.unparse(check))


class _Rewriter(ast.NodeTransformer):
    """Replace each maximal call into the model's code by a probe name `{prefix}{k}`."""

    def __init__(self, probes: list[str], bound: frozenset[str], prefix: str) -> None:
        self.probes, self.bound, self.prefix = probes, bound, prefix

    def tainted(self, n: ast.AST) -> bool:
        names = (x.id for x in ast.walk(n) if isinstance(x, ast.Name))
        return any(name not in _SAFE and name not in self.bound for name in names)

    def probe(self, src: str) -> ast.Name:
        self.probes.append(src)
        return ast.Name(id=f"{self.prefix}{len(self.probes) - 1}", ctx=ast.Load())

    def visit(self, n: ast.AST) -> ast.AST:
        if not isinstance(n, ast.expr) or not self.tainted(n):
            return n
        if isinstance(n, _RECURSE) or (isinstance(n, ast.Call) and not self.tainted(n.func)):
            return self.generic_visit(n)
        if isinstance(n, ast.GeneratorExp | ast.ListComp) and len(n.generators) == 1:
            return self.comprehension(n)
        return self.probe(ast.unparse(n))

    def comprehension(self, n: ast.GeneratorExp | ast.ListComp) -> ast.expr:
        """`all(f(i) == i * i for i in xs)`: the sandbox returns [(f(i),), (i,)] pairs, the
        comparison runs here, so an always-equal object inside a generator passes nothing."""
        gen = n.generators[0]
        loop = sorted({x.id for x in ast.walk(gen.target) if isinstance(x, ast.Name)})
        inner: list[str] = []
        prefix = f"{self.prefix}{len(self.probes)}_"
        elt = _Rewriter(inner, self.bound | set(loop), prefix).visit(n.elt)
        names = [ast.Name(id=v, ctx=ast.Load()) for v in loop]
        pair = ast.Tuple([ast.Tuple([ast.parse(e, mode="eval").body for e in inner], ast.Load()),
                          ast.Tuple(names, ast.Load())], ast.Load())  # fmt: skip
        name = self.probe(ast.unparse(ast.ListComp(elt=pair, generators=n.generators)))
        store = [ast.Name(id=f"{prefix}{k}", ctx=ast.Store()) for k in range(len(inner))]
        target = ast.Tuple([ast.Tuple(store, ast.Store()),
                            ast.Tuple([ast.Name(id=v, ctx=ast.Store()) for v in loop], ast.Store())],
                           ast.Store())  # fmt: skip
        comp = ast.comprehension(target=target, iter=name, ifs=[], is_async=0)
        return type(n)(elt=elt, generators=[comp])


def decode(v: Any) -> Any:
    """Inverse of the runner's `encode`: tagged JSON back to builtin values."""
    if not isinstance(v, dict):
        return v
    (tag, x), *_ = v.items()
    if tag == "i":
        return int(x)
    if tag == "f":
        return float(x)
    if tag == "c":
        return complex(float(x[0]), float(x[1]))
    items = [decode(i) for i in x] if tag != "d" else None
    return {"l": list, "t": tuple, "s": set}.get(tag, dict)(
        items if items is not None else [(decode(k), decode(w)) for k, w in x]
    )


def _same_output(got: str, want: str) -> bool:
    norm = [line.rstrip() for line in want.strip().splitlines()]
    return [line.rstrip() for line in got.strip().splitlines()] == norm


def _plan(tests: Any, setup: str = "") -> tuple[list[dict], list[AssertTest], list[dict]]:
    """Turn the row's tests into runner items (setup statements and probes) and stdio cases."""
    if isinstance(tests, str):
        tests = [tests]
    items: list[dict] = [{"stmt": setup, "k": -1}] if setup.strip() else []
    asserts: list[AssertTest] = []
    stdio: list[dict] = []
    for k, test in enumerate(tests):
        if isinstance(test, dict):
            stdio.append({"input": str(test.get("input", "")), "output": str(test["output"])})
            continue
        for stmt in ast.parse(test).body:
            if isinstance(stmt, ast.Assert):
                t = split_assert(stmt)
                items += [{"t": len(asserts), "p": j, "expr": e} for j, e in enumerate(t.probes)]
                asserts.append(t)
            else:
                items.append({"stmt": ast.unparse(stmt), "k": k})
    return items, asserts, stdio


def run_tests(program: str, tests: Any, limits: Limits = Limits(), setup: str = "") -> dict[str, Any]:
    """Run `program` against `tests` in the sandbox; returns passed/total and what went wrong."""
    items, asserts, stdio = _plan(tests, setup)
    total = len(asserts) + len(stdio)
    n = max(total, 1)
    spec = {"code": program, "items": items, "stdio": [s["input"] for s in stdio],
            "test_s": max(limits.wall_s / (n + 1), 0.5)}  # fmt: skip
    source = _RUNNER.replace("SPEC: dict = {}", f"SPEC = json.loads({json.dumps(spec)!r})", 1)
    run = run_python(source, limits)
    values: dict[tuple, Any] = {}
    stdio_out: dict[int, Any] = {}
    fatal = None
    for line in run.stdout.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if "fatal" in msg:
            fatal = fatal or str(msg["fatal"])
        if "t" in msg:
            key, target = ("t", msg["t"], msg.get("p")), values
        elif "s" in msg:
            key, target = ("s", msg["s"]), stdio_out
        else:
            continue
        # a result reported twice (by the runner and by a forger) counts as a failure
        target[key] = None if key in target else msg
    passed = sum(_judge_assert(i, t, values) for i, t in enumerate(asserts))
    for i, case in enumerate(stdio):
        msg = stdio_out.get(("s", i))
        passed += bool(msg and "out" in msg and _same_output(msg["out"], case["output"]))
    return {"passed": passed, "total": total, "timed_out": run.timed_out, "fatal": fatal,
            "isolated": run.isolated, "wall_s": round(run.wall_s, 3)}  # fmt: skip


def _judge_assert(i: int, test: AssertTest, values: dict[tuple, Any]) -> bool:
    env = {}
    for j in range(len(test.probes)):
        msg = values.get(("t", i, j))
        if not msg or "v" not in msg:
            return False
        try:
            env[f"__p{j}"] = decode(msg["v"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return False
    try:
        return bool(eval(test.check, {"__builtins__": _SAFE}, env))  # noqa: S307 - trusted test
    except Exception:
        return False


@REWARDS.register("code")
def code(
    completion: str,
    row: dict,
    tests_key: str = "tests",
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    program: str = "auto",
    scoring: str = "partial",
    **_: Any,
) -> Score:
    """Tests of `row[tests_key]` the program in the completion passes (sandboxed): the fraction
    (`scoring: partial`) or 1.0 iff all pass (`scoring: all`). See the module doc for the row.

    >>> row = {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 1"]}
    >>> code("<answer>```python\\ndef add(a, b):\\n    return a + b\\n```</answer>", row).value
    0.6666666666666666
    >>> code("def add(a, b):\\n    return a + b", row, scoring="all").value
    0.0
    """
    if scoring not in ("partial", "all"):
        raise ValueError(f"scoring {scoring!r} is not one of partial, all")
    tests = _tests_of(row, tests_key)
    if tests is None:
        return Score(0.0, {"no_code": False, "no_tests": True, "passed": 0, "total": 0})
    fmt = code_format(row, tests)
    src, where = find_program(completion, row, fmt, program)
    base = {"no_code": src is None, "no_tests": False, "format": fmt, "program": where}
    if src is None:
        return Score(0.0, base | {"passed": 0, "total": 0 if fmt == "humaneval" else len(tests)})
    limits = Limits(wall_s=timeout_s, cpu_s=max(1, math.ceil(timeout_s)),
                    memory_bytes=memory_mb << 20)  # fmt: skip
    setup = _setup(row)
    if fmt == "humaneval":
        res = run_check(src, tests, str(row["entry_point"]), _prefix(row, fmt), limits, setup)
    else:
        res = run_tests(src, tests, limits, setup)
    if not res["total"]:
        return Score(0.0, base | {"no_tests": True} | res)
    passed_all = res["passed"] == res["total"]
    value = float(passed_all) if scoring == "all" else res["passed"] / res["total"]
    return Score(value, base | {"passed_all": passed_all} | res)


code.check_rows = check_code_rows  # type: ignore[attr-defined]  # called before a run
