"""Language consistency (R1 stage 2): the share of chain-of-thought words in the target language.

Words are found script by script: a run of Latin letters is one word, every Han character (and
kana, hangul syllable) is one word, since Chinese has no spaces. A word counts as "in the target
language" when its script is the target's script; numbers, LaTeX commands and punctuation are
not words. So "the sum 是 12" in English is 2 of 3 words.
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
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
#: a language is the set of scripts its words are written in
LANGUAGES = {
    "en": {"latin"}, "fr": {"latin"}, "de": {"latin"}, "es": {"latin"},
    "zh": {"han"}, "ja": {"han", "kana"}, "ko": {"hangul", "han"},
    "ru": {"cyrillic"}, "ar": {"arabic"}, "el": {"greek"},
}  # fmt: skip


def word_scripts(text: str) -> list[str]:
    """The script of each word in `text`.

    >>> word_scripts(r"the sum 是 12, so \\frac{a}{b}")
    ['latin', 'latin', 'han', 'latin', 'latin', 'latin']
    """
    text = _LATEX_CMD.sub(" ", text)
    return [m.lastgroup for m in _WORD.finditer(text)]


@REWARDS.register("language")
def language_consistency(
    completion: str, row: dict | None = None, target: str = "en", **_: Any
) -> Score:
    """Proportion of words in the thinking (the whole text if there is no `<think>`) in `target`.

    >>> language_consistency("<think>the sum 是 12</think><answer>12</answer>").value
    0.6666666666666666
    >>> language_consistency("<think>和是12</think><answer>12</answer>", target="zh").value
    1.0
    """
    scripts = LANGUAGES.get(target, {target})
    cot = last_block(completion, "think")
    if cot is None:
        cot = completion.split("</think>")[0] if "</think>" in completion else completion
    words = word_scripts(cot)
    if not words:
        return Score(0.0, {"words": 0})
    share = sum(w in scripts for w in words) / len(words)
    return Score(share, {"words": len(words)})
