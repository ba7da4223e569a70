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
* `test_setup` (str, optional, MBPP's `test_setup_code` / imports): run before the tests.
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


def _plan(tests: Any) -> tuple[list[dict], list[AssertTest], list[dict]]:
    """Turn the row's tests into runner items (setup statements and probes) and stdio cases."""
    if isinstance(tests, str):
        tests = [tests]
    items: list[dict] = []
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


def run_tests(program: str, tests: Any, limits: Limits = Limits()) -> dict[str, Any]:
    """Run `program` against `tests` in the sandbox; returns passed/total and what went wrong."""
    items, asserts, stdio = _plan(tests)
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
    **_: Any,
) -> Score:
    """Fraction of `row[tests_key]` the program in the completion passes (sandboxed).

    >>> row = {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 1"]}
    >>> code("<answer>```python\\ndef add(a, b):\\n    return a + b\\n```</answer>", row).value
    0.6666666666666666
    """
    program = extract_code(completion)
    if program is None:
        return Score(0.0, {"no_code": True, "passed": 0, "total": len(row[tests_key])})
    limits = Limits(wall_s=timeout_s, cpu_s=max(1, math.ceil(timeout_s)),
                    memory_bytes=memory_mb << 20)  # fmt: skip
    res = run_tests(program, row[tests_key], limits)
    value = res["passed"] / res["total"] if res["total"] else 0.0
    return Score(value, {"no_code": False} | res)
