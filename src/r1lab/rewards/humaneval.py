"""HumanEval check functions, run so that the model's code cannot fake a pass.

A HumanEval row's tests are a program: `def check(candidate): assert candidate(...) == ...`,
loops and helper functions included, called as `check(entry_point)`. Its asserts cannot be
split statically like MBPP's (the expected value may be computed in a loop, by a helper of the
prompt, from a seeded random generator), so the check runs twice, each time in the sandbox:

1. *record*: the model's program, then `check(candidate)` with `candidate` wrapping the model's
   function. Only each call's argument digest and return value (plain builtins, or the name of
   the exception) come back; the asserts' outcomes there are ignored.
2. *replay*: no model code: the row's own `code_prefix` (trusted) and the check, where
   `candidate` returns the recorded values in order. Each `assert` executed is one test.

An object whose `__eq__` always says yes cannot be recorded (not a plain builtin), a patched
`assert` or `sys.exit(0)` lives only in the first sandbox, and a forged result line duplicates
the runner's own and both are discarded. Every assert statement of the check counts at least
once, so a check that stops early (a refused value) fails the asserts it did not reach.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from r1lab.rewards.sandbox import Limits, run_python

_RUNNER = Path(__file__).with_name("_check_runner.py").read_text()


def rewrite_check(source: str) -> tuple[str, int]:
    """Every `assert T[, msg]` becomes `__r1_assert(lambda: T, k)`; returns (source, #asserts).

    >>> src, n = rewrite_check("def check(candidate):\\n    for i in range(3):\\n        assert candidate(i) == i")
    >>> n, "__r1_assert(lambda: candidate(i) == i, 0)" in src
    (1, True)
    """
    tree = ast.parse(source)
    count = [0]

    class _Asserts(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> ast.AST:
            k = count[0]
            count[0] += 1
            call = ast.Call(
                func=ast.Name(id="__r1_assert", ctx=ast.Load()),
                args=[ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[],
                                                    kw_defaults=[], defaults=[]),
                                 body=self.visit(node.test)),
                      ast.Constant(k)],
                keywords=[])  # fmt: skip
            return ast.copy_location(ast.Expr(call), node)

    tree = ast.fix_missing_locations(_Asserts().visit(tree))
    return ast.unparse(tree), count[0]


def _messages(stdout: bytes) -> list[dict]:
    out = []
    for line in stdout.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            out.append(msg)
    return out


def _source(spec: dict) -> str:
    return _RUNNER.replace("SPEC: dict = {}", f"SPEC = json.loads({json.dumps(spec)!r})", 1)


def run_check(
    program: str,
    check: str,
    entry_point: str,
    prefix: str = "",
    limits: Limits = Limits(),
    setup: str = "",
) -> dict[str, Any]:
    """Run `check(entry_point)` against `program`; returns passed/total as `run_tests` does.
    `prefix` (the row's code prefix) and `setup` are trusted: the replay runs them, and the
    recording runs `setup` after the program."""
    if "def check" not in check:
        raise ValueError("a HumanEval test needs `def check(candidate): ...`")
    rewritten, static = rewrite_check(check)
    test_s = max(limits.wall_s / 4, 0.5)
    spec = {"mode": "record", "code": program, "check": rewritten, "entry_point": entry_point,
            "test_s": test_s, "setup": setup}  # fmt: skip
    first = run_python(_source(spec), limits)
    calls: dict[int, dict | None] = {}
    fatal = None
    for msg in _messages(first.stdout):
        if "fatal" in msg:
            fatal = fatal or str(msg["fatal"])
        c = msg.get("c")
        if isinstance(c, int) and 0 <= c < 100_000:
            calls[c] = None if c in calls else msg  # reported twice: a forger's line, refused
    n_calls = max(calls, default=-1) + 1
    recorded = [calls.get(i) for i in range(n_calls)]
    spec = {"mode": "replay", "prefix": prefix + ("\n" + setup if setup else ""), "check": rewritten,
            "calls": recorded}  # fmt: skip
    second = run_python(_source(spec), Limits(wall_s=limits.wall_s, cpu_s=limits.cpu_s,
                                              memory_bytes=limits.memory_bytes))  # fmt: skip
    results = _messages(second.stdout)
    oks = [bool(m["ok"]) for m in results if "ok" in m]
    finished = any(m.get("done") for m in results)
    stopped = second.timed_out or any("aborted" in m for m in results)
    if not finished and not stopped:  # no model code ran there: the row's own code is broken
        err = second.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ValueError(f"the row's HumanEval check does not run: {err[-1] if err else second.returncode}")
    # a check that ran to its end counts the asserts it executed; one stopped early fails the
    # rest, and each assert statement counts at least once
    total = len(oks) if finished else max(len(oks) + 1, static)
    return {"passed": sum(oks), "total": total, "timed_out": first.timed_out, "fatal": fatal,
            "calls": n_calls, "isolated": first.isolated,
            "wall_s": round(first.wall_s + second.wall_s, 3)}  # fmt: skip
