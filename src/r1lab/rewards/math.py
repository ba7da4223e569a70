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
from r1lab.rewards.parsing import boxed_spans, extract_answer, last_block, strip_think

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
    r"(?:\s*,)?\s*(?:\\text\{\s*(?:or|and)\s*\}|\\(?:quad|qquad)\s*(?:\\text\{\s*(?:or|and)\s*\}\s*)?"
    r"(?:\\(?:quad|qquad))?|\bor\b|\band\b|;)\s*(?:,\s*)?"
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


_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\$([^$\n]+?)\$|\\\(([^\n]*?)\\\)", re.S)
_COMMAND = re.compile(r"\\(?:begin|end)\{[^{}]*\}|\\(?:text|mbox|textrm|mathrm|textbf)\{[^{}]*\}|\\[A-Za-z]+")
_PROSE = re.compile(r"[A-Za-z]{2,}")
# two candidates offered as alternatives ("4 or 5", "$4$, or $5$"), looked for after the last
# mention of "answer" (a solution may say "x = 1 or x = -1" on its way)
_HEDGE = re.compile(r"(?:\d|\$|\})\s*,?\s*\bor\b\s*,?\s*(?:\$|\\boxed|-?\d)", re.I)
_ANSWER_WORD = re.compile(r"answer", re.I)
_SENTENCE_END = re.compile(r"(?<=[^\d\s])\.(?:\s|$)|\n")
_FINAL_PHRASE = re.compile(r"final answer is", re.I)
_VARIABLES_LHS = re.compile(r"^(?:\\left)?\(\s*[a-zA-Z](?:\s*,\s*[a-zA-Z])+\s*(?:\\right)?\)\s*=\s*")
_LIST_GAP = re.compile(
    r"^[\s,;$.]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad|\\[,;!]|~)[\s,;$.]*)*$")
# between two boxes of a gold that lists its parts: at most one word and "and"/"or"
_GOLD_GAP = re.compile(r"^[\s,;$.)(\\+]*(?:[A-Za-z]+[\s,;$.)(\\]+)?(?:(?:and|or)[\s,;$.)(\\]*)?$")
_AMBIGUOUS_COMMA = re.compile(r"^(-?\d+),(\d{1,2}|\d{4,})$")


def _top_boxes(text: str) -> list[tuple[int, int, str]]:
    """The `\\boxed{}` spans of `text` that are not inside another box."""
    every = boxed_spans(text)
    return [s for s in every if not any(o[0] < s[0] and s[1] <= o[1] for o in every)]


def graded_answer(completion: str, multi: bool = False) -> str | None:
    """The final answer of a completion, the one text that is graded (None: no answer).

    The region is the last `<answer>` block (else the visible text, when it boxes something);
    thinking is never graded. In the region: the last `\\boxed{}` (adjacent boxes joined only
    by "and"/commas form one list, so boxing candidates is a list that a single gold never
    equals); "The final answer is X" after the last box wins. Only when the gold has several
    parts (`multi`) are all the boxes of the region read together as one list. A region of
    prose (words outside the math) is returned whole: `accuracy` lets math-verify's answer
    extraction find its one answer.

    >>> graded_answer(r"<answer>First \\boxed{3}, no wait, actually \\boxed{4}</answer>")
    '4'
    >>> graded_answer(r"<answer>\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}</answer>", multi=True)
    'k = 45, n = 2'
    >>> graded_answer("<answer>$7$</answer>"), graded_answer("no tags, 9") is None
    ('$7$', True)
    """
    visible = strip_think(completion)
    block = last_block(visible, "answer")
    region = block if block is not None else visible
    boxes = _top_boxes(region)
    if block is None and not boxes:
        return None
    phrase = list(_FINAL_PHRASE.finditer(region))
    if phrase and (not boxes or phrase[-1].start() > boxes[-1][1]):
        # the phrase's own sentence: "The final answer is $10,455$. I hope it is correct."
        region, boxes = _SENTENCE_END.split(region[phrase[-1].end():], 1)[0].strip(" :"), []
    if boxes:
        if multi and len(boxes) > 1:
            answer: str | None = ", ".join(c.strip() for _, _, c in boxes)
        else:
            group = [boxes[-1]]  # boxes joined only by "and"/"or"/commas are one list
            for prev in reversed(boxes[:-1]):
                if not _LIST_GAP.match(region[prev[1]:group[0][0]]):
                    break
                group.insert(0, prev)
            answer = ", ".join(c.strip() for _, _, c in group)
    else:
        answer = region
    if answer is None or not answer.strip():
        return None
    if _words(answer) and ("\\(" in answer or "\\[" in answer or answer.count("$") >= 2) \
            and not _MATH_SPAN.search(answer):
        return None  # math delimiters that close no span: inline math does not cross lines
    return answer.strip()


_LETTER = re.compile(r"^[A-H]$")


def choice_letter(answer: str, options: int = 4) -> str | None:
    """The option letter a multiple-choice answer names (GPQA rows carry `choices`): the one
    standalone capital among the first `options` letters; none, or two different ones, is None.

    >>> [choice_letter(a) for a in ["B", "(B)", "B) Neon", "The answer is B", r"\\boxed{C}", "A or B"]]
    ['B', 'B', 'B', 'B', 'C', None]
    """
    letters = "ABCDEFGH"[:options]
    text = re.sub(r"\\(?:boxed|text|textbf|mathrm)\{([^{}]*)\}", r" \1 ", answer)
    found = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text))
    return found.pop() if len(found) == 1 else None


def _words(answer: str) -> list[str]:
    outside = _COMMAND.sub(" ", _MATH_SPAN.sub(" ", answer))
    return [w for w in _PROSE.findall(outside) if w.lower() not in ("or", "and")]


def is_prose(answer: str) -> bool:
    """Words outside the math (LaTeX commands, `\\text{}`, "or"/"and" and math spans aside).

    >>> is_prose(r"x = 1 \\text{ or } x = 2"), is_prose("Answer $ 9 $"), is_prose(r"\\frac{1}{2} cm")
    (False, True, False)
    """
    words = _words(answer)
    return len(words) >= 2 or (len(words) == 1 and _MATH_SPAN.search(answer) is not None)


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple[list, str]:
    """Parse a gold answer once (plain text, LaTeX, or a number); returns (parsed, normalized).

    A gold with several boxes (`\\boxed{1} papers and \\boxed{2} bins`) is all of them.

    >>> parse_gold(r"\\boxed{1} papers and \\boxed{2} bins")[1]
    '1, 2'
    """
    boxes = _top_boxes(gold)
    if len(boxes) > 1 and all(_GOLD_GAP.match(gold[a[1]:b[0]]) for a, b in zip(boxes, boxes[1:])):
        text = ", ".join(c.strip() for _, _, c in boxes)
    else:
        text = (extract_answer(gold) if boxes or "<answer>" in gold else None) or gold
    text = normalize(text)
    return _parse(text), text


def gold_is_multi(gold: Any) -> bool:
    """Has the gold several parts (a list or a set of answers)? Then several boxes may answer it.

    >>> gold_is_multi("(2, 2), (6, 2)"), gold_is_multi("(1, 2)"), gold_is_multi("72")
    (True, False, False)
    """
    return shape(parse_gold(str(gold))[1]) in ("list", "set")


def answers_match(gold: Any, answer: str) -> tuple[bool, bool]:
    """Compare an extracted answer with the gold; returns (correct, answer_parsed).

    A digit group after a comma that is not a thousands group (`1000,99`, `1,22`) is read both
    as a decimal comma and as a list; either reading may match.

    >>> answers_match("1000", r"1\\,000")
    (True, True)
    >>> answers_match("(1, 2)", r"\\{1, 2\\}")
    (False, True)
    >>> answers_match(r"\\frac{1}{3}", "0.33")
    (False, True)
    >>> answers_match("1000.99", "1000,99")
    (True, True)
    """
    gold = str(gold)
    ok, parsed = _match(gold, answer)
    alt_gold, alt_answer = _decimal_comma(gold), _decimal_comma(answer)
    if not ok and (alt_gold, alt_answer) != (gold, answer):
        ok, alt_parsed = _match(alt_gold, alt_answer)
        parsed = parsed or alt_parsed
    return ok, parsed


def _decimal_comma(text: str) -> str:
    m = _AMBIGUOUS_COMMA.match(text.strip().strip("$").strip())
    return f"{m.group(1)}.{m.group(2)}" if m else text


@functools.lru_cache(maxsize=65536)
def _match(gold: str, answer: str) -> tuple[bool, bool]:
    # cached on the strings: in RL a group of completions repeats the same few answers
    gold_parsed, gold_text = parse_gold(gold)
    text = _VARIABLES_LHS.sub("", normalize(answer))
    if _INTEGER.match(text) and _INTEGER.match(gold_text):
        return int(text) == int(gold_text), True  # the common case, without sympy
    gold_shape, pred_shape = shape(gold_text), shape(text)
    if gold_shape == "tuple" and pred_shape == "set":
        return False, True
    if gold_shape == "tuple" and pred_shape == "list":
        text = f"({text})"  # a bare list is read in order, never as an unordered set
    pred_parsed = _parse(text)
    timeout = _TIMEOUT_S if _in_main_thread() else None
    ok = False
    if pred_parsed and gold_parsed:
        ok = verify(gold_parsed, pred_parsed, allow_set_relation_comp=True, timeout_seconds=timeout)
        if not ok:
            ok = _vector_eq(gold_parsed, pred_parsed, timeout)
    several = pred_shape in ("list", "set") and gold_shape == "single"
    unread = not _parsed(pred_parsed) or not _parsed(gold_parsed) or ";" in gold or "=" in gold
    if not ok and unread and gold_shape != "tuple" and not several:
        # what r1lab's normalization misreads, math-verify's own extraction may read (equation
        # systems, unit words, broken LaTeX); never for a pair (sets would answer it) and never
        # when several answers meet a single gold (hedging)
        ok = _math_verify_alone(gold, answer, timeout)
    return bool(ok), _parsed(pred_parsed)


def _prose_match(gold: str, text: str, multi: bool) -> tuple[bool, bool, str]:
    """An answer in words: math-verify's answer extraction picks its one answer, which is then
    compared as any answer is. "4 or 5" in a sentence never answers a single gold (hedging)."""
    tail = text[[m.start() for m in _ANSWER_WORD.finditer(text)][-1]:] if _ANSWER_WORD.search(text) else text
    if not multi and _HEDGE.search(tail):
        return False, True, text
    timeout = _TIMEOUT_S if _in_main_thread() else None
    found = parse(text, _EXTRACTION, parsing_timeout=timeout)
    if not found:
        return False, False, text
    extracted = found[-1] if isinstance(found[-1], str) else str(found[0])
    ok, _ = answers_match(gold, extracted)
    if not ok:
        ok = _math_verify_alone(gold, text, timeout)
    return ok, True, extracted


def _math_verify_alone(gold: str, answer: str, timeout: int | None) -> bool:
    """math-verify's own reading of the raw texts (as its `compare_strings` test helper)."""
    g = parse(gold, _EXTRACTION, parsing_timeout=timeout)
    if not g:
        return False
    for text in ((answer,) if "$" in answer else (f"${answer}$",)):
        p = parse(text, _EXTRACTION, parsing_timeout=timeout)
        if p and verify(g, p, timeout_seconds=timeout):
            return True
    return False


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

    A row without a gold (`None` or no such field) is an error, never a silent 0; only a code
    row of mixed math + code data (it has `tests`) scores 0 here, with `no_gold` set.

    >>> accuracy("<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>", {"answer": "68"})
    Score(value=1.0, metrics={'extracted_answer': '68', 'no_answer': False, 'parse_failure': False})
    >>> accuracy("<think>the answer is <answer>68</answer></think>", {"answer": 68}).metrics["no_answer"]
    True
    """
    gold = row.get(answer_key)
    if gold is None and row.get("tests") is not None:  # a code row of mixed data: not graded here
        return Score(0.0, {"extracted_answer": None, "no_answer": False, "parse_failure": False,
                           "no_gold": True})
    if gold is None:
        raise ValueError(f"accuracy: the row has no gold answer in field {answer_key!r} "
                         f"(fields: {', '.join(map(str, row)) or 'none'})")
    multi = gold_is_multi(gold)
    answer = graded_answer(completion, multi=multi)
    if answer is None:
        return Score(0.0, {"extracted_answer": None, "no_answer": True, "parse_failure": False})
    if row.get("choices") and _LETTER.match(str(gold).strip()):
        letter = choice_letter(answer, len(row["choices"]))
        return Score(float(letter == str(gold).strip()),
                     {"extracted_answer": letter or answer, "no_answer": False, "parse_failure": letter is None})
    if is_prose(answer):
        ok, parsed, answer = _prose_match(str(gold), answer, multi)
    else:
        ok, parsed = answers_match(gold, answer)
        if not ok and _words(answer):  # "Soucis : 2,74": a word r1lab cannot read past
            ok = _prose_match(str(gold), answer, multi)[0]
    return Score(
        float(ok), {"extracted_answer": answer, "no_answer": False, "parse_failure": not parsed}
    )
