"""Runs a HumanEval check function inside the sandbox, in one of two modes (standard library only).

`record` (with the model's code): run the program, then `check(candidate)` where `candidate`
wraps the model's function and reports, for each call, a canonical key of its arguments and its
return value as plain builtins (or the name of the exception it raised) on a private fd. The
check's own asserts are evaluated but their outcome is ignored: it is judged elsewhere.

`replay` (no model code at all; only the row's trusted `code_prefix`, setup and check): run
`check(candidate)` again where `candidate` returns the recorded values in order. Each `assert`
the check executes is reported as passed or failed; this run's output is trusted.
The harness (`r1lab.rewards.humaneval`) has rewritten every `assert T` into `__r1_assert(lambda: T, k)`.
"""

import builtins
import contextlib
import hashlib
import json
import os
import random
import signal

SPEC: dict = {}  # replaced by the harness: {"mode", "code", "prefix", "check", "entry_point", ...}

_OUT = -1
_write = os.write
_dumps = json.dumps


class Refused(BaseException):
    """A recorded call without a usable value: stops the replayed check (never caught by it)."""


def report(**msg):
    _write(_OUT, (_dumps(msg) + "\n").encode())


def encode(x, depth=0):
    if depth > 40:
        raise TypeError("nested too deep")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return {"i": str(x)}
    if t is float:
        return {"f": repr(x)}
    if t is complex:
        return {"c": [repr(x.real), repr(x.imag)]}
    if t in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "s", frozenset: "s"}[t]
        items = [encode(v, depth + 1) for v in x]
        if tag == "s":
            items.sort(key=_dumps)  # set order depends on the interpreter's hash seed
        return {tag: items}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    raise TypeError(f"unsupported result type {t.__name__}")


def decode(v):
    if not isinstance(v, dict):
        return v
    (tag, x), *_ = v.items()
    if tag == "i":
        return int(x)
    if tag == "f":
        return float(x)
    if tag == "c":
        return complex(float(x[0]), float(x[1]))
    if tag == "d":
        return {decode(k): decode(w) for k, w in x}
    return {"l": list, "t": tuple, "s": set}[tag](decode(i) for i in x)


def arg_key(args, kwargs):
    """Canonical digest of a call's arguments (the same in both runs, whatever the hash seed)."""
    try:
        text = _dumps([encode(args), encode(dict(sorted(kwargs.items())))])
    except TypeError:
        text = repr((args, sorted(kwargs.items())))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _on_alarm(signum, frame):
    raise TimeoutError("call timed out")


def record(spec):
    env = {"__name__": "__main__"}
    try:
        exec(compile(spec["code"], "solution.py", "exec"), env)
        fn = env[spec["entry_point"]]
        if spec.get("setup"):  # the row's trusted setup (helpers the check uses)
            exec(compile(spec["setup"], "setup.py", "exec"), env)
    except BaseException as e:  # no function to test: a failure, whatever the exit status
        report(fatal=f"{type(e).__name__}: {e}"[:200])
        return
    calls = [0]

    def candidate(*args, **kwargs):
        i = calls[0]
        calls[0] += 1
        key = arg_key(args, kwargs)
        signal.setitimer(signal.ITIMER_REAL, spec["test_s"])
        try:
            value = fn(*args, **kwargs)
            if type(value).__name__ == "generator":
                value = list(value)
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            report(c=i, a=key, e=type(e).__name__)
            raise
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            report(c=i, a=key, v=encode(value))
        except TypeError:
            report(c=i, a=key, x=True)
        return value

    def check_assert(thunk, k):
        with contextlib.suppress(Exception):
            thunk()

    env["__r1_assert"] = check_assert
    try:
        random.seed(0)
        exec(compile(spec["check"], "check.py", "exec"), env)
        env["check"](candidate)
    except BaseException:
        pass


def replay(spec):
    env = {"__name__": "__main__"}
    exec(compile(spec["prefix"], "prefix.py", "exec"), env)
    calls = spec["calls"]
    state = [0]

    def candidate(*args, **kwargs):
        i = state[0]
        state[0] += 1
        rec = calls[i] if i < len(calls) else None
        if rec is None or rec.get("a") != arg_key(args, kwargs):
            raise Refused("no recorded result for this call")
        if "e" in rec:
            exc = getattr(builtins, str(rec["e"]), None)
            if isinstance(exc, type) and issubclass(exc, Exception):
                raise exc("raised by the candidate")
            raise RuntimeError(str(rec["e"]))
        if "v" not in rec:
            raise Refused("the candidate returned a value that is not a plain builtin")
        return decode(rec["v"])

    def check_assert(thunk, k):
        try:
            ok = bool(thunk())
        except Exception:
            ok = False
        report(k=k, ok=ok)

    env["__r1_assert"] = check_assert
    random.seed(0)
    exec(compile(spec["check"], "check.py", "exec"), env)
    try:
        env["check"](candidate)
    except BaseException as e:
        report(aborted=type(e).__name__)
        return
    report(done=True)


def main():
    global _OUT
    _OUT = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    signal.signal(signal.SIGALRM, _on_alarm)
    if SPEC["mode"] == "record":
        record(SPEC)
    else:
        replay(SPEC)
    report(end=True)
    os._exit(0)


if __name__ == "__main__":
    try:
        main()
    except SyntaxError as e:
        report(fatal=f"SyntaxError: {e.msg}")
        os._exit(0)
