"""The program that runs *inside* the sandbox; its source is sent there with a JSON spec appended.

Standard library only. It never sees an expected value: it runs the model's code, evaluates
the probe expressions the harness asked for (`f(2)`, `Solution().solve([1])`), or feeds stdin to
the program, and reports plain values on a private fd. The harness compares. A result that is
not made of exact builtin types (`type(x) is int`, ...) is refused, so an object that claims to
equal everything has no way to pass.
"""

import contextlib
import io
import json
import os
import signal
import sys

SPEC: dict = {}  # replaced by the harness: {"code", "items", "stdio", "test_s"}

_OUT = -1  # the private result fd, set in main()
_write = os.write
_dumps = json.dumps


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
        return {tag: [encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    raise TypeError(f"unsupported result type {t.__name__}")


def _on_alarm(signum, frame):
    raise TimeoutError("test timed out")


def run_stdio(code, tests, test_s):
    """Each stdin test in a forked child with a fresh namespace; stdout goes to a capped file."""
    for i, stdin in enumerate(tests):
        path = f"stdio_{i}.out"
        pid = os.fork()
        if pid == 0:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            sys.stdin = io.StringIO(stdin)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
            try:
                exec(code, {"__name__": "__main__"})
            except SystemExit:
                pass
            except BaseException:
                os._exit(101)
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
            os._exit(0)
        signal.setitimer(signal.ITIMER_REAL, test_s)
        try:
            _, status = os.waitpid(pid, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            report(s=i, e="TimeoutError")
            continue
        with open(path, "rb") as f:
            out = f.read(1 << 20).decode("utf-8", "replace")
        report(s=i, out=out, rc=os.waitstatus_to_exitcode(status))


def run_asserts(code, items, test_s):
    """Run the code once, then each setup statement and probe in order."""
    env = {"__name__": "__main__"}
    try:
        exec(code, env)
    except BaseException as e:  # sys.exit() before the tests is a failure, not a pass
        report(fatal=type(e).__name__)
        return
    for item in items:
        signal.setitimer(signal.ITIMER_REAL, test_s)
        try:
            if "stmt" in item:
                exec(item["stmt"], env)
            else:
                value = eval(item["expr"], env)
                if type(value).__name__ == "generator":
                    value = list(value)
                report(t=item["t"], p=item["p"], v=encode(value))
        except BaseException as e:
            if "stmt" in item:
                report(stmt=item["k"], e=type(e).__name__)
            else:
                report(t=item["t"], p=item["p"], e=type(e).__name__)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def main():
    global _OUT
    _OUT = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # what the model's code prints is nobody's business
        os.dup2(null, fd)
    signal.signal(signal.SIGALRM, _on_alarm)
    code = compile(SPEC["code"], "solution.py", "exec")
    if SPEC["stdio"]:
        run_stdio(code, SPEC["stdio"], SPEC["test_s"])
    if SPEC["items"]:
        run_asserts(code, SPEC["items"], SPEC["test_s"])
    report(done=True)
    os._exit(0)


if __name__ == "__main__":
    try:
        main()
    except SyntaxError as e:
        report(fatal=f"SyntaxError: {e.msg}")
        os._exit(0)
