"""Score the hand-written math table with r1lab and with math-verify alone (shared with the benchmark)."""

from math_table import CASES
from math_verify import parse, verify

from r1lab.rewards.math import accuracy
from r1lab.rewards.parsing import extract_answer


def score_table():
    """Rows of (category, gold, completion, expected, r1lab score, math-verify-alone score)."""
    rows = []
    for cat, gold, completion, expected in CASES:
        ours = accuracy(completion, {"answer": gold}).value
        alone = float(verify(parse(str(gold)), parse(completion)))
        rows.append((cat, gold, completion, expected, ours, alone))
    return rows


def math_verify_on_extracted(cases=CASES):
    """math-verify given r1lab's extracted answer: isolates what normalization adds."""
    hits = 0
    for _, gold, completion, expected in cases:
        answer = extract_answer(completion)
        got = 0.0 if answer is None else float(verify(parse(str(gold)), parse("$" + answer + "$")))
        hits += got == expected
    return hits / len(cases)
