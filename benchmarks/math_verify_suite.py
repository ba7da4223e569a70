"""r1lab's accuracy reward on math-verify's own regression suite, side by side with math-verify.

Get the suite (it ships in the source distribution, not the wheel) and run:

    pip download --no-deps --no-binary :all: math-verify==0.9.0 -d /tmp/mv
    tar xzf /tmp/mv/math_verify-0.9.0.tar.gz -C /tmp/mv
    .venv/bin/python benchmarks/math_verify_suite.py /tmp/mv/math_verify-0.9.0

The cases are read (not imported) from `tests/test_all.py`, `test_boxed.py`,
`test_numina_cases.py`, `test_open_thoughts.py` and `test_strict.py`: every
`@pytest.mark.parametrize` list whose test calls `compare_strings(gold, pred, ...)`, with the
options that call passes (match types, precision, strict, set relations). math-verify is scored
with those options, as its test does. r1lab is scored as a training run would score it: the
prediction is placed inside `<answer>...</answer>` and graded by the `accuracy` reward against the
gold, with r1lab's one fixed policy (no per-case options). Each disagreement is printed with the
policy that explains it (`POLICIES`, each with a test in tests/rewards/test_math.py). The last
line is JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from pathlib import Path

FILES = ("test_all.py", "test_boxed.py", "test_numina_cases.py", "test_open_thoughts.py",
         "test_strict.py")

# (gold, prediction) -> why r1lab grades it differently on purpose; tested in test_math.py
POLICIES = {
    (r"$(\begin{pmatrix}\frac{1}{3}\\ \frac{1}{5} \end{pmatrix})$", r"$\begin{pmatrix}0.33\\0.2 \end{pmatrix}$"):
        "precision=2 case: r1lab grades at math-verify's default precision; 0.33 is not 1/3",
    (r"$(\frac{3}{5},\frac{8}{3}]$", r"$(0.6,2.6667]$"):
        "precision=2 case: r1lab grades at math-verify's default precision; 2.6667 is not 8/3",
    (r"$x \in [-2,7]$", r"$-2 \\le x \\le 7$"):
        "allow_set_relation_comp=False case: r1lab always lets an inequality answer an interval",
    (r"$f(x)$", r"$f(y)$"):
        "strict=False case: r1lab keeps strict variable comparison (f(y) is not f(x))",
}


def read_cases(root: Path) -> list[dict]:
    """Every (gold, pred, expected, options) of the five files, in file order."""
    cases = []
    for name in FILES:
        tree = ast.parse((root / "tests" / name).read_text())
        for fn in tree.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            call = next((n for n in ast.walk(fn) if isinstance(n, ast.Call)
                         and getattr(n.func, "id", None) == "compare_strings"), None)
            for deco in fn.decorator_list:
                if not (isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "parametrize"):
                    continue
                names = [s.strip() for s in ast.literal_eval(deco.args[0]).split(",")]
                if call is None or not {"gold", "pred", "expected"} <= set(names):
                    continue
                for values in _value(deco.args[1]):
                    p = dict(zip(names, values))
                    opts = {}
                    for kw in call.keywords:
                        v = kw.value
                        opts[kw.arg] = p[v.id] if isinstance(v, ast.Name) else _value(v)
                    cases.append({"file": name, "test": fn.name, "gold": p["gold"], "pred": p["pred"],
                                  "expected": bool(p["expected"]), "options": opts})
    return cases


def _value(node: ast.expr):
    """A literal of the suite; one case is an f-string over `math` (`f"{math.sqrt(17):.15f}"`)."""
    code = compile(ast.Expression(node), "<suite>", "eval")
    return eval(code, {"math": math, "__builtins__": {}})  # noqa: S307 (the suite's own literals)


def math_verify_says(case: dict) -> bool:
    """math-verify's verdict with the options its own test passes (its `compare_strings`)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    o = case["options"]
    targets = []
    for t in o.get("match_types", ["latex", "expr"]):
        targets.append(LatexExtractionConfig(boxed_match_priority=0) if t == "latex"
                       else ExprExtractionConfig())
    gold, pred = parse(case["gold"], targets), parse(case["pred"], targets)
    return bool(verify(gold, pred, float_rounding=o.get("precision", 6), strict=o.get("strict", True),
                       allow_set_relation_comp=o.get("allow_set_relation_comp", False)))


def r1lab_says(case: dict) -> bool:
    """r1lab's accuracy reward on `<answer>{pred}</answer>` with the gold as the row's answer."""
    from r1lab.rewards.math import accuracy

    return accuracy(f"<answer>{case['pred']}</answer>", {"answer": case["gold"]}).value == 1.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sdist", type=Path, help="the unpacked math_verify-0.9.0 source distribution")
    ap.add_argument("--show", action="store_true", help="print every case, not only disagreements")
    args = ap.parse_args(argv)
    cases = read_cases(args.sdist)
    t0 = time.perf_counter()
    ours = mv = 0
    misses = []
    for c in cases:
        c["math_verify"], c["r1lab"] = math_verify_says(c), r1lab_says(c)
        mv += c["math_verify"] == c["expected"]
        ours += c["r1lab"] == c["expected"]
        if c["r1lab"] != c["expected"]:
            misses.append(c)
        if args.show or c["r1lab"] != c["expected"]:
            why = POLICIES.get((c["gold"], c["pred"]), "UNEXPLAINED")
            if c["r1lab"] == c["expected"]:
                why = "agrees"
            print(f"{c['file']}::{c['test']}  expected={int(c['expected'])} math-verify="
                  f"{int(c['math_verify'])} r1lab={int(c['r1lab'])}  gold={c['gold']!r} "
                  f"pred={c['pred']!r} options={c['options']}  [{why}]")
    n = len(cases)
    print(f"\n{'':<12}{'agree':>8}{'of':>6}{'rate':>9}")
    print(f"{'math-verify':<12}{mv:>8}{n:>6}{mv / n:>9.1%}")
    print(f"{'r1lab':<12}{ours:>8}{n:>6}{ours / n:>9.1%}")
    unexplained = [c for c in misses if (c["gold"], c["pred"]) not in POLICIES]
    summary = {"cases": n, "math_verify_agree": mv, "r1lab_agree": ours,
               "r1lab_rate": round(ours / n, 4), "math_verify_rate": round(mv / n, 4),
               "policy_disagreements": len(misses) - len(unexplained),
               "unexplained": len(unexplained), "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["r1lab_rate"] >= 0.98 else 1)
