"""The one parser of DeepSeek-R1's output format: `<think> reasoning </think> <answer> a </answer>`.

Rewards (what is graded), analytics (think rate, reasoning length), serving (`reasoning_content`
vs `content`) and the step's metrics all read a completion through `parse_r1`, so they agree on
what the thinking is. The rules:

* the reasoning runs from the first `<think>` to the last `</think>`;
* a `</think>` with no `<think>` before it closes a block opened by the prompt (DeepSeek-R1's
  chat template ends the prompt with `<think>`): the reasoning runs from the start of the text.
  `opened=True` says so up front, which matters when the completion has not closed it yet;
* an unclosed `<think>` (cut at the length limit) thinks to the end of the text;
* what is not reasoning is `visible`; it is the only text ever graded. `answer` is the content
  of its last closed `<answer>` block.

>>> p = parse_r1("<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>")
>>> (p.reasoning, p.think_closed, p.answer, p.thinks)
('23+45: 3+5=8, 2+4=6', True, '68', True)
>>> parse_r1("so 2+2=4</think> The answer is 4").visible
' The answer is 4'
>>> p = parse_r1("<answer>4</answer><think>unfinished")
>>> (p.visible, p.reasoning, p.think_closed)
('<answer>4</answer>', 'unfinished', False)
>>> parse_r1("still going", opened=True).reasoning
'still going'
>>> parse_r1("just 7").reasoning is None
True
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass(frozen=True)
class R1Parts:
    """A completion split into its thinking and the rest."""

    reasoning: str | None  # inside the think block, unstripped; None when there is none
    think_closed: bool  # the think block was closed by `</think>`
    visible: str  # everything that is not thinking (the text that rewards grade)
    answer: str | None  # content of the last closed <answer> block of `visible`, unstripped
    answer_closed: bool  # no <answer> block of `visible` is left open

    @property
    def thinks(self) -> bool:
        """A closed, non-empty think block: the completion reasoned before answering."""
        return self.think_closed and bool(self.reasoning and self.reasoning.strip())

    @property
    def content(self) -> str:
        """`visible` without its answer tags: what a chat client shows as the answer."""
        return self.visible.replace(ANSWER_OPEN, "").replace(ANSWER_CLOSE, "")


def parse_r1(text: str, *, opened: bool = False) -> R1Parts:
    """Split `text` into reasoning and visible text; `opened`: the prompt opened `<think>`.

    >>> parse_r1("a</think>b<think>c").visible  # a second, unclosed block is thinking too
    'b'
    >>> parse_r1("x <think>y</think> z <answer>1</answer> <answer> 2 </answer>").answer
    ' 2 '
    >>> parse_r1("<think>t</think><answer>3").answer_closed
    False
    """
    if opened:
        text = OPEN + text
    first, last = text.find(OPEN), text.rfind(CLOSE)
    if last >= 0 and (first < 0 or first > last):  # closes a block the prompt opened
        reasoning, before, after, closed = text[:last], "", text[last + len(CLOSE):], True
    elif first >= 0 and last > first:
        reasoning, before, after = text[first + len(OPEN):last], text[:first], text[last + len(CLOSE):]
        closed = True
    elif first >= 0:  # opened, never closed: thinking to the end
        reasoning, before, after, closed = text[first + len(OPEN):], text[:first], "", False
    else:
        reasoning, before, after, closed = None, text, "", False
    visible = before + after.split(OPEN, 1)[0]  # a block opened after the last close: thinking
    end = visible.rfind(ANSWER_CLOSE)
    start = visible.rfind(ANSWER_OPEN, 0, end) if end >= 0 else -1
    answer = visible[start + len(ANSWER_OPEN):end] if start >= 0 else None
    return R1Parts(reasoning, closed, visible, answer,
                   answer_closed=visible.rfind(ANSWER_OPEN) <= max(end, -1))
