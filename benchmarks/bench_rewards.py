"""Rewards benchmark: math-table accuracy (r1lab vs math-verify alone) and scoring throughput.

.venv/bin/python benchmarks/bench_rewards.py            # both
.venv/bin/python benchmarks/bench_rewards.py --table    # accuracy table only
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rewards"))
logging.disable(logging.WARNING)

from math_table import CASES  # noqa: E402
from tests_helpers_math import math_verify_on_extracted, score_table  # noqa: E402

from r1lab.rewards import RewardComposer  # noqa: E402
from r1lab.rewards import math as rmath  # noqa: E402


def table() -> None:
    rows = score_table()
    n = len(rows)
    ours = sum(r[4] == r[3] for r in rows)
    alone = sum(r[5] == r[3] for r in rows)
    print(f"math answer table: {n} pairs")
    print(f"  r1lab accuracy reward                     {ours}/{n} = {ours / n:.1%}")
    print(f"  math-verify alone on the full completion  {alone}/{n} = {alone / n:.1%}")
    mv_ext = math_verify_on_extracted()
    print(f"  math-verify on r1lab's extracted answer   {mv_ext:.1%}")
    by_cat: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for cat, *_, exp, o, a in rows:
        by_cat[cat][0] += 1
        by_cat[cat][1] += o == exp
        by_cat[cat][2] += a == exp
    print(f"  {'category':<10} {'n':>4} {'r1lab':>7} {'mv alone':>9}")
    for cat, (k, o, a) in by_cat.items():
        print(f"  {cat:<10} {k:>4} {o / k:>7.0%} {a / k:>9.0%}")
    for cat, gold, comp, exp, o, _ in rows:
        if o != exp:
            print(f"  r1lab wrong: [{cat}] gold={gold!r} completion={comp[-80:]!r} expected={exp}")


def _math_batch(n: int) -> tuple[list[str], list[dict]]:
    kinds = [
        lambda i: (str(i), f"<think>{i}-1+1</think><answer>{i}</answer>"),
        lambda i: (
            rf"\frac{{{i}}}{{{i + 1}}}",
            rf"<think>x</think><answer>\boxed{{{i}/{i + 1}}}</answer>",
        ),
        lambda i: (f"{i}.5", rf"<think>x</think><answer>{i}\,000.5</answer>"),
        lambda i: (f"({i}, {i + 1})", f"<think>x</think><answer>({i},{i + 1})</answer>"),
    ]
    pairs = [kinds[i % len(kinds)](i) for i in range(n)]
    return [c for _, c in pairs], [{"answer": g} for g, _ in pairs]


def _code_batch(n: int) -> tuple[list[str], list[dict]]:
    ok = "<answer>```python\ndef add(a, b):\n    return a + b\n```</answer>"
    bad = "<answer>```python\ndef add(a, b):\n    return a - b\n```</answer>"
    tests = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-5, 5) == 0"]
    return [ok if i % 2 else bad for i in range(n)], [{"tests": tests}] * n


def _rate(name: str, batch, workers: int, clear=None, repeat: int = 1) -> float:
    completions, rows = batch
    composer = RewardComposer([{"name": name}], workers=workers, timeout_s=30)
    best = float("inf")
    for _ in range(repeat):
        if clear:
            clear()
        start = time.perf_counter()
        composer(completions, rows)
        best = min(best, time.perf_counter() - start)
    composer.close()
    return len(completions) / best


def throughput() -> None:
    def cold() -> None:
        rmath._match.cache_clear()
        rmath.parse_gold.cache_clear()

    workers = [1, 2, 4]
    math_batch, code_batch = _math_batch(256), _code_batch(32)
    print(f"\nscoring throughput, completions/s ({os.cpu_count()} CPUs)")
    print(
        f"  {'reward':<34}"
        + "".join(f"{f'{w} worker' + ('s' if w > 1 else ''):>12}" for w in workers)
    )
    lines = {
        "accuracy, distinct answers (cold)": [
            _rate("accuracy", math_batch, w, cold) for w in workers
        ],
        "accuracy, repeated answers (warm)": [
            _rate("accuracy", math_batch, w, repeat=3) for w in workers
        ],
        "format": [_rate("format", math_batch, w, repeat=3) for w in workers],
        "code (sandboxed, 3 tests each)": [_rate("code", code_batch, w) for w in workers],
    }
    for name, rates in lines.items():
        print(f"  {name:<34}" + "".join(f"{r:>12.0f}" for r in rates))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", action="store_true", help="only the accuracy table")
    args = parser.parse_args()
    table()
    if not args.table:
        throughput()
    print(f"\n({len(CASES)} table pairs; python {sys.version.split()[0]})")
