"""Language consistency (R1 stage 2): the share of chain-of-thought words in the target language.

Words are found script by script: a run of Latin letters is one word, every Han character (and
kana, hangul syllable) is one word, since Chinese has no spaces. A word counts as "in the target
language" when its script is the target's script; numbers, LaTeX commands and punctuation are
not words. So "the sum 是 12" in English is 2 of 3 words.

Numerals are words only for a language written in them: the toy language `digits` (ASCII
numerals, the `language` scenario's target; its second "language" writes the same digits as
letters, see `r1lab.data.tasks.to_letters`). `mixes` tells whether a chain of thought switches
between scripts at all: the scenario's mixing rate.
"""

from __future__ import annotations

import re
from typing import Any

from r1lab.rewards.base import REWARDS, Score
from r1lab.rewards.parsing import last_block

_SCRIPTS = {
    "latin": r"[A-Za-z\u00c0-\u024f]+(?:'[A-Za-z]+)?",
    "han": r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]",
    "kana": r"[\u3040-\u30ff]",
    "hangul": r"[\uac00-\ud7af]",
    "cyrillic": r"[\u0400-\u04ff]+",
    "arabic": r"[\u0600-\u06ff]+",
    "greek": r"[\u0370-\u03ff]+",
}
_WORD = re.compile("|".join(f"(?P<{k}>{v})" for k, v in _SCRIPTS.items()))
_WORD_NUM = re.compile("|".join(f"(?P<{k}>{v})" for k, v in {"digits": "[0-9]+", **_SCRIPTS}.items()))
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_R1_TAG = re.compile(r"</?(?:think|answer)>")
#: a language is the set of scripts its words are written in
LANGUAGES = {
    "en": {"latin"}, "fr": {"latin"}, "de": {"latin"}, "es": {"latin"},
    "zh": {"han"}, "ja": {"han", "kana"}, "ko": {"hangul", "han"},
    "ru": {"cyrillic"}, "ar": {"arabic"}, "el": {"greek"},
    "digits": {"digits"},  # toy language: runs of ASCII numerals are its words
}  # fmt: skip


def word_scripts(text: str, numerals: bool = False) -> list[str]:
    """The script of each word in `text`; with `numerals`, runs of ASCII digits are words too.

    >>> word_scripts(r"the sum 是 12, so \\frac{a}{b}")
    ['latin', 'latin', 'han', 'latin', 'latin', 'latin']
    >>> word_scripts("34+6:de+g", numerals=True)
    ['digits', 'digits', 'latin', 'latin']
    """
    text = _LATEX_CMD.sub(" ", text)
    return [m.lastgroup for m in (_WORD_NUM if numerals else _WORD).finditer(text)]


def reasoning(completion: str, whole: bool = True) -> str:
    """The chain of thought: the last `<think>` block, else everything before `</think>`, else
    (`whole`) the whole text, R1 tags removed, or "".

    >>> reasoning("<answer>4</answer>"), reasoning("<answer>4</answer>", whole=False)
    (' 4 ', '')
    """
    cot = last_block(completion, "think")
    if cot is None:
        cot = completion.split("</think>")[0] if "</think>" in completion else (completion if whole else "")
    return _R1_TAG.sub(" ", cot)


def mixes(completion: str, numerals: bool = True) -> bool:
    """Whether the thinking holds words of more than one script (numerals counted by default); a
    completion that does not think does not mix.

    >>> mixes("<think>345+67:5+7=12;de+g:e+g+b=bb</think><answer>412</answer>")
    True
    >>> mixes("<think>345+67:5+7=12</think><answer>412</answer>"), mixes("<answer>4</answer>")
    (False, False)
    """
    return len(set(word_scripts(reasoning(completion, whole=False), numerals))) > 1


@REWARDS.register("language")
def language_consistency(
    completion: str, row: dict | None = None, target: str = "en", **_: Any
) -> Score:
    """Proportion of words in the thinking (the whole text if there is no `<think>`) in `target`.

    >>> language_consistency("<think>the sum 是 12</think><answer>12</answer>").value
    0.6666666666666666
    >>> language_consistency("<think>和是12</think><answer>12</answer>", target="zh").value
    1.0
    >>> language_consistency("<think>34+6:de+g</think><answer>412</answer>", target="digits").value
    0.5
    """
    scripts = LANGUAGES.get(target, {target})
    words = word_scripts(reasoning(completion), numerals="digits" in scripts)
    if not words:
        return Score(0.0, {"words": 0})
    share = sum(w in scripts for w in words) / len(words)
    return Score(share, {"words": len(words)})


@REWARDS.register("language_mixing")
def language_mixing(completion: str, row: dict | None = None, numerals: bool = True, **_: Any) -> Score:
    """1.0 when the reasoning mixes scripts (`mixes`), else 0.0: a measurement, meant for weight
    0, so that `reward/language_mixing` in metrics.jsonl is the per-step mixing rate.

    >>> language_mixing("<think>12+3:2+3=5;b+a:b+a=b</think><answer>15</answer>").value
    1.0
    """
    return Score(float(mixes(completion, numerals)))
