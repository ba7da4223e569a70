"""Accuracy on math: extract the answer R1-style, compare it with math-verify.

math-verify does the mathematics (LaTeX and plain parsing, numeric tolerance, symbolic
equality, sets, intervals, matrices, equations). r1lab adds only what it lacks for a *bare*
LaTeX answer pulled out of `<answer>` or `\\boxed{}`:

* thousands separators written as LaTeX spacing or grouping (`1\\,000`, `14{,}916`, `1~000`)
  and Unicode signs (`−`, `°`, `×`, thin spaces);
* several answers written as `x = 1 \\text{ or } x = 2` read as the list `1, 2`;
* an ordered pair is not answered by a set: math-verify deliberately accepts `{1, 2}` or
  `2, 1` for the gold `(1, 2)` (it cannot tell a pair from an open interval); r1lab requires
  a pair for a pair.

Everything is then handed to `math_verify.parse` wrapped in `\\boxed{}` so that its LaTeX
extractor sees one whole expression. Its timeouts use `signal.alarm`, which only works in the
main thread; elsewhere they are switched off and the caller (the composer) owns the timeout.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import MatrixBase, Tuple

from r1lab.rewards.base import REWARDS, Score
from r1lab.rewards.parsing import extract_answer

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once per disabled timeout

_EXTRACTION = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
_TIMEOUT_S = 5

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00b0": r"^\circ", "\u00d7": r"\times ", "\u00b7": r"\cdot ",
    "\u221e": r"\infty ", "\u03c0": r"\pi ", "\u2264": r"\le ", "\u2265": r"\ge ",
    "\u221a": r"\sqrt ", "\u00bd": r"\frac{1}{2}", "\u2260": r"\ne ",
}  # fmt: skip
_THIN = "\u2009\u202f\u00a0"
# one thousands group separator: LaTeX spaces, braced comma, Unicode thin spaces
_SEP = r"(?:\\,|\\;|\\:|\\!|\\ |~|\{,\}|\\thinspace\s*|[" + _THIN + "])"
_GROUPED = re.compile(r"(?<![\d.])(\d{1,3})((?:" + _SEP + r"\d{3})+)(?![\d])")
_DECIMAL_COMMA = re.compile(r"(?<![\d.])(\d+)\{,\}(\d+)(?![\d])")
_PLAIN_SPACE_NUMBER = re.compile(r"^-?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_OR_WORDS = re.compile(
    r"\s*(?:\\text\{\s*(?:or|and)\s*\}|\\(?:quad|qquad)\s*(?:\\text\{(?:or|and)\}\s*)?|\bor\b|\band\b|;)\s*"
)
_REPEATING = re.compile(r"(\d*)\.(\d*)\\overline\{(\d+)\}")
_E_NOTATION = re.compile(r"(?<![\w\\.])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_TEXT_NUMBER = re.compile(r"\\(?:text|mbox|textrm|mathrm)\{\s*(-?\d[\d.]*)\s+([^{}]*)\}")
_INTEGER = re.compile(r"^-?\d+$")
_WORDS = re.compile(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}")
_DELIMS = [("$$", "$$"), ("$", "$"), (r"\(", r"\)"), (r"\[", r"\]")]


def normalize(answer: str) -> str:
    """Rewrite what math-verify misreads in a bare LaTeX answer; leave the rest untouched.

    >>> normalize(r"1\\,000\\,000")
    '1000000'
    >>> normalize(r"14{,}916")
    '14916'
    >>> normalize(r"x = 1 \\text{ or } x = -3")
    'x = 1, x = -3'
    >>> normalize("−5°")
    '-5^\\\\circ'
    """
    s = answer.strip()
    for left, right in _DELIMS:
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            s = s[len(left) : -len(right)].strip()
    for char, latex in _UNICODE.items():
        s = s.replace(char, latex)
    s = s.replace(r"\displaystyle", "").replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    s = _REPEATING.sub(_repeating_to_fraction, s)
    s = _E_NOTATION.sub(r"\1 \\times 10^{\2}", s)
    s = _TEXT_NUMBER.sub(r"\1 \\text{ \2}", s)
    s = _GROUPED.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), s)
    s = _DECIMAL_COMMA.sub(r"\1.\2", s)  # what is left of {,} is a decimal comma: 3{,}5
    if _PLAIN_SPACE_NUMBER.match(s):
        s = s.replace(" ", "")
    for c in _THIN:
        s = s.replace(c, " ")
    s = _OR_WORDS.sub(", ", s).strip(" ,")
    return s.rstrip(".").strip()


def _repeating_to_fraction(m: re.Match) -> str:
    """0.1\\overline{6} -> \\frac{1}{6}: math-verify has no repeating decimals."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    num = int(whole + fixed + rep) - int(whole + fixed)
    den = (10 ** len(rep) - 1) * 10 ** len(fixed)
    return f"\\frac{{{num}}}{{{den}}}"


def shape(answer: str) -> str:
    """How a (normalized) answer is written: 'tuple', 'set', 'list' or 'single'.

    >>> [shape(a) for a in ["(1, 2)", r"\\{1, 2\\}", "1, 2", "(1+2)", r"f(1, 2)"]]
    ['tuple', 'set', 'list', 'single', 'single']
    """
    s = answer.strip()
    if s.startswith(r"\{") and s.endswith(r"\}"):
        return "set"
    if s.startswith(r"\left\{") and s.endswith(r"\right\}"):
        return "set"
    for left, right in [("(", ")"), (r"\left(", r"\right)")]:
        inner = s[len(left) : -len(right)]
        wrapped = s.startswith(left) and s.endswith(right)
        if wrapped and _top_level_comma(inner) and _closes_at_end(inner):
            return "tuple"
    return "list" if _top_level_comma(s) else "single"


def _top_level_comma(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += 1 if ch in "([{" else -1 if ch in ")]}" else 0
        if ch == "," and depth == 0:
            return True
    return False


def _closes_at_end(inner: str) -> bool:
    """True when the outer parentheses wrap the whole text, as in (1, 2) but not (1)(2)."""
    depth = 0
    for ch in inner:
        depth += 1 if ch in "([{" else -1 if ch in ")]}" else 0
        if depth < 0:
            return False
    return depth == 0


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _parse(text: str) -> list:
    timeout = _TIMEOUT_S if _in_main_thread() else None
    return parse("\\boxed{" + text + "}", _EXTRACTION, parsing_timeout=timeout)


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple[list, str]:
    """Parse a gold answer once (plain text, LaTeX, or a number); returns (parsed, normalized)."""
    boxed = extract_answer(gold) if "\\boxed" in gold or "<answer>" in gold else None
    text = normalize(boxed or gold)
    return _parse(text), text


def answers_match(gold: Any, answer: str) -> tuple[bool, bool]:
    """Compare an extracted answer with the gold; returns (correct, answer_parsed).

    >>> answers_match("1000", r"1\\,000")
    (True, True)
    >>> answers_match("(1, 2)", r"\\{1, 2\\}")
    (False, True)
    >>> answers_match(r"\\frac{1}{3}", "0.33")
    (False, True)
    """
    return _match(str(gold), answer)


@functools.lru_cache(maxsize=65536)
def _match(gold: str, answer: str) -> tuple[bool, bool]:
    # cached on the strings: in RL a group of completions repeats the same few answers
    gold_parsed, gold_text = parse_gold(gold)
    text = normalize(answer)
    if _INTEGER.match(text) and _INTEGER.match(gold_text):
        return int(text) == int(gold_text), True  # the common case, without sympy
    gold_shape, pred_shape = shape(gold_text), shape(text)
    if gold_shape == "tuple" and pred_shape == "set":
        return False, True
    if gold_shape == "tuple" and pred_shape == "list":
        text = f"({text})"  # a bare list is read in order, never as an unordered set
    pred_parsed = _parse(text)
    if not pred_parsed or not gold_parsed:
        return False, _parsed(pred_parsed)
    timeout = _TIMEOUT_S if _in_main_thread() else None
    ok = verify(gold_parsed, pred_parsed, allow_set_relation_comp=True, timeout_seconds=timeout)
    if not ok:
        ok = _vector_eq(gold_parsed, pred_parsed, timeout)
    if not ok and _WORDS.search(text):
        # a sentence ("the answer is 42"): let math-verify's own answer extraction find the number
        sentence = parse(text, parsing_timeout=timeout)
        ok = bool(sentence) and verify(gold_parsed, sentence, timeout_seconds=timeout)
    return bool(ok), _parsed(pred_parsed)


def _parsed(items: list) -> bool:
    """math-verify falls back to the raw string when it cannot parse: that is a parse failure."""
    return any(not isinstance(x, str) for x in items)


def _vector_eq(gold: list, pred: list, timeout: int | None) -> bool:
    """A column or row vector answers a tuple of the same entries, and the other way round."""

    def as_tuple(items: list) -> list:
        out = []
        for x in items:
            if isinstance(x, MatrixBase) and 1 in x.shape:
                out.append(Tuple(*x))
        return out

    g, p = as_tuple(gold), as_tuple(pred)
    if not g and not p:
        return False
    return bool(verify(g or gold, p or pred, timeout_seconds=timeout))


@REWARDS.register("accuracy")
def accuracy(completion: str, row: dict, answer_key: str = "answer", **_: Any) -> Score:
    """1.0 when the graded answer equals the gold `row[answer_key]`, else 0.0.

    >>> accuracy("<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>", {"answer": "68"})
    Score(value=1.0, metrics={'extracted_answer': '68', 'no_answer': False, 'parse_failure': False})
    >>> accuracy("<think>the answer is <answer>68</answer></think>", {"answer": 68}).metrics["no_answer"]
    True
    """
    answer = extract_answer(completion)
    if answer is None:
        return Score(0.0, {"extracted_answer": None, "no_answer": True, "parse_failure": False})
    ok, parsed = answers_match(row[answer_key], answer)
    return Score(
        float(ok), {"extracted_answer": answer, "no_answer": False, "parse_failure": not parsed}
    )
