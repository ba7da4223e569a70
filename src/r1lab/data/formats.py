"""Dataset formats: turn a published row (GSM8K, MATH, HumanEval, ...) into r1lab's canonical row.

Every row a run uses, from a file or a synthetic task, has after loading:

* `prompt`: the text the template wraps (the question; GPQA's question with its lettered options);
* `answer`: the gold the accuracy reward grades against (`None` for rows without one);
* code rows also `tests`, `code_format` (`humaneval` | `mbpp` | `stdio`) and, for HumanEval,
  `entry_point` and `code_prefix`, the fields `r1lab.rewards.code` reads.

Original columns are kept. Where a canonical field would overwrite an original column of the
same name with another value, the original stays under `raw_<name>` (GSM8K's `answer` becomes
`raw_answer`, and `answer` is "72").

The format is `data.format`, or detected from the first row's columns (`detect`). The prompt
column is `data.prompt_field` when the rows have it, else the format's own; likewise the gold
column and `data.answer_field`. A row that does not fit its format is a `DataError` naming the
file and line.

>>> to_canonical({"question": "2+3?", "answer": "2+3=5\\n#### 5"}, "gsm8k")["answer"]
'5'
>>> r = to_canonical({"problem": "Find x.", "solution": "So $x=\\\\boxed{4}$."}, "math")
>>> r["prompt"], r["answer"]
('Find x.', '4')
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from r1lab.rewards.parsing import boxed_spans

FORMAT_NAMES = ("auto", "fields", "gsm8k", "math", "aime", "gpqa", "humaneval", "mbpp", "stdio",
                "messages")  # fmt: skip
_GSM8K_GOLD = re.compile(r"####\s*(.+?)\s*$", re.S)
_INTEGER = re.compile(r"^[+-]?\d+$")


class FormatError(ValueError):
    """A row that does not fit its format; the loader adds the file and line."""


@dataclass(frozen=True)
class Format:
    name: str
    prompt: tuple[str, ...]  # the format's prompt columns, first present wins
    answer: tuple[str, ...]  # its gold columns
    describe: str  # for the log line: where prompt and answer come from


FORMATS = {
    "fields": Format("fields", ("question",), ("answer",), "prompt <- data.prompt_field, answer <- data.answer_field"),
    "gsm8k": Format("gsm8k", ("question",), ("answer",), "answer <- the number after ####"),
    "math": Format("math", ("problem",), ("answer", "solution"),
                   "answer <- the answer column, else the last \\boxed{} of solution"),
    "aime": Format("aime", ("problem", "Problem", "question"), ("answer", "Answer"),
                   "answer <- an integer"),
    "gpqa": Format("gpqa", ("Question", "question"), ("Correct Answer",),
                   "options shuffled (data.seed), answer <- the letter of the correct one"),
    "humaneval": Format("humaneval", ("prompt",), (), "tests <- test (check(candidate)), entry_point"),
    "mbpp": Format("mbpp", ("text", "prompt"), (), "tests <- test_list asserts"),
    "stdio": Format("stdio", ("question", "description", "question_content", "problem"), (),
                    "tests <- stdin/stdout pairs"),
    "messages": Format("messages", (), ("answer",), "prompt <- the last user message"),
}  # fmt: skip
_STDIO_COLUMNS = ("input_output", "public_tests", "public_test_cases", "private_tests", "tests")


def detect(row: dict[str, Any]) -> str:
    """The format a row's columns say it is in.

    >>> detect({"question": "q", "answer": "a\\n#### 3"}), detect({"problem": "p", "solution": "s"})
    ('gsm8k', 'math')
    >>> detect({"prompt": "def f():", "test": "def check(candidate): ...", "entry_point": "f"})
    'humaneval'
    >>> detect({"text": "Write f.", "test_list": ["assert f() == 1"]}), detect({"question": "q", "answer": "7"})
    ('mbpp', 'fields')
    """
    cols = set(row)
    if "messages" in cols and isinstance(row["messages"], list):
        return "messages"
    if {"prompt", "test", "entry_point"} <= cols:
        return "humaneval"
    if "test_list" in cols:
        return "mbpp"
    if cols & {"input_output", "public_tests", "public_test_cases"}:
        return "stdio"
    if {"Correct Answer", "Incorrect Answer 1"} <= cols:
        return "gpqa"
    if "problem" in cols and ("solution" in cols or "answer" in cols):
        if "solution" not in cols and _INTEGER.match(str(row["answer"]).strip()):
            return "aime"
        return "math"
    if "question" in cols and "####" in str(row.get("answer", "")):
        return "gsm8k"
    return "fields"


def last_boxed_gold(text: str) -> str | None:
    """The last top-level `\\boxed{}` of a worked solution (MATH's gold), or None.

    >>> last_boxed_gold(r"First $\\boxed{2}$ is wrong; the answer is $\\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    """
    every = boxed_spans(text)
    top = [s for s in every if not any(o[0] < s[0] and s[1] <= o[1] for o in every)]
    return top[-1][2].strip() if top else None


def gsm8k_gold(text: str) -> str:
    """The number after `####` in a GSM8K answer, thousands commas dropped.

    >>> gsm8k_gold("He pays 3 * 24 = <<3*24=72>>72\\n#### 1,072"), gsm8k_gold("#### $18.")
    ('1072', '18')
    """
    m = _GSM8K_GOLD.search(text)
    if not m:
        raise FormatError("GSM8K answer has no '#### <number>' line")
    return m.group(1).replace(",", "").strip().lstrip("$").rstrip(".").strip()


def _pick(row: dict, wanted: str | None, columns: tuple[str, ...]) -> str | None:
    """The column to read: `wanted` (the config's field) when the row has it, else the format's."""
    if wanted is not None and wanted in row:
        return wanted
    for c in columns:
        if c in row:
            return c
    return None


def _text(row: dict, col: str | None, what: str) -> str:
    if col is None:
        raise FormatError(f"no {what} column (has: {', '.join(map(str, row)) or 'none'})")
    value = row[col]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FormatError(f"field {col!r} must be a string, got {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise FormatError(f"field {col!r} is empty")
    return value


def _gpqa(row: dict, q: str, seed: int, index: int) -> tuple[str, str, list[str]]:
    """Question with options A-D shuffled by (seed, row index); gold = the correct letter."""
    right = _text(row, "Correct Answer", "correct answer").strip()
    wrong = [str(row[k]).strip() for k in sorted(row) if k.startswith("Incorrect Answer") and row[k]]
    if not wrong:
        raise FormatError("GPQA row has no 'Incorrect Answer N' options")
    options = [right, *wrong]
    random.Random(f"{seed}:{index}").shuffle(options)
    letters = "ABCDEFGH"[: len(options)]
    body = "\n".join(f"{letter}) {opt}" for letter, opt in zip(letters, options))
    prompt = f"{q.strip()}\n\n{body}\n\nAnswer with the letter of the correct option."
    return prompt, letters[options.index(right)], options


def _stdio_tests(row: dict) -> list[dict[str, str]]:
    """APPS `input_output` {"inputs", "outputs"}, CodeContests `public_tests`/`private_tests`
    {"input": [...], "output": [...]}, LiveCodeBench `public_test_cases` [{"input", "output"}]
    (JSON strings are decoded)."""
    pairs: list[dict[str, str]] = []
    for col in _STDIO_COLUMNS:
        value = row.get(col)
        if value is None or value == "":
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise FormatError(f"field {col!r} is not valid JSON ({exc.msg})") from None
        if isinstance(value, dict):
            ins = value.get("inputs", value.get("input"))
            outs = value.get("outputs", value.get("output"))
            if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
                raise FormatError(f"field {col!r} needs equally long input/output lists")
            pairs += [{"input": str(i), "output": str(o)} for i, o in zip(ins, outs)]
        elif isinstance(value, list) and all(isinstance(t, dict) and "input" in t and "output" in t
                                             for t in value):
            pairs += [{"input": str(t["input"]), "output": str(t["output"])} for t in value]
        else:
            raise FormatError(f"field {col!r} is not a list of stdin/stdout pairs")
    if not pairs:
        raise FormatError(f"no stdin/stdout tests (looked in {', '.join(_STDIO_COLUMNS)})")
    return pairs


def to_canonical(row: dict[str, Any], fmt: str, prompt_field: str | None = None,
                 answer_field: str | None = None, seed: int = 0, index: int = 0) -> dict[str, Any]:
    """The canonical row of `row` in format `fmt` (see the module docstring); FormatError if it
    does not fit."""
    if not isinstance(row, dict):
        raise FormatError(f"expected a JSON object, got {type(row).__name__}")
    spec = FORMATS[fmt]
    out: dict[str, Any] = {}
    answer: Any = None
    if fmt == "messages":
        msgs = row.get("messages")
        users = [m for m in msgs or [] if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not str(users[-1].get("content") or "").strip():
            raise FormatError("'messages' has no user message with content")
        prompt = str(users[-1]["content"])
        col = _pick(row, answer_field, spec.answer)
        answer = row[col] if col else None
    else:
        pcol = _pick(row, prompt_field, spec.prompt)
        prompt = _text(row, pcol, "prompt")
        acol = _pick(row, answer_field, spec.answer)
        if fmt == "gsm8k":
            answer = gsm8k_gold(_text(row, acol, "answer"))
        elif fmt == "math":
            text = _text(row, acol, "answer")
            answer = last_boxed_gold(text) if "\\boxed" in text or "\\fbox" in text else text.strip()
            if not answer:
                raise FormatError(f"field {acol!r} has an empty \\boxed{{}}")
        elif fmt == "aime":
            answer = _text(row, acol, "answer").strip()
            if not _INTEGER.match(answer):
                raise FormatError(f"AIME answer {answer!r} in field {acol!r} is not an integer")
            answer = str(int(answer))
        elif fmt == "gpqa":
            prompt, answer, out["choices"] = _gpqa(row, prompt, seed, index)
        elif fmt == "humaneval":
            for need in ("test", "entry_point"):
                _text(row, need, need)
            out |= {"tests": row["test"], "entry_point": row["entry_point"],
                    "code_prefix": row["prompt"], "code_format": "humaneval"}
        elif fmt == "mbpp":
            tests = row.get("test_list")
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
                raise FormatError("'test_list' must be a non-empty list of assert strings")
            prompt = f"{prompt.strip()}\nYour code should pass these tests:\n" + "\n".join(tests)
            out |= {"tests": list(tests), "code_format": "mbpp"}
        elif fmt == "stdio":
            out |= {"tests": _stdio_tests(row), "code_format": "stdio"}
        elif acol is not None:  # fields
            answer = row[acol]
            if answer is not None and not isinstance(answer, str):
                answer = str(answer) if isinstance(answer, (int, float)) else answer
    out |= {"prompt": prompt, "answer": answer}
    canonical = dict(row)
    for key, value in out.items():
        if key in row and row[key] != value and f"raw_{key}" not in row:
            canonical[f"raw_{key}"] = row[key]
        canonical[key] = value
    return canonical
