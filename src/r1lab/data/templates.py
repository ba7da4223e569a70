"""Prompt templates: how a question becomes the text the policy continues.

`r1_zero` is the paper's template (Table 1 of DeepSeek-R1): the model is told to think inside
`<think>` and answer inside `<answer>`, and nothing else about how to reason. `tiny` is the same
idea cut to a few tokens for the from-scratch demo model. `chat` uses the tokenizer's own chat
template, for instruction-tuned checkpoints.

>>> TEMPLATES.get("tiny")("12+30", None)
'Q:12+30\\nA:'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from r1lab.registry import Registry

Template = Callable[[str, Any], str]  # (question, tokenizer) -> prompt text
TEMPLATES: Registry[Template] = Registry("template", "prompt templates")

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {question}. Assistant:"
)
SYSTEM = (
    "Think about the problem inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags."
)


@TEMPLATES.register("tiny")
def tiny(question: str, tokenizer: Any) -> str:
    return f"Q:{question}\nA:"


@TEMPLATES.register("r1_zero")
def r1_zero(question: str, tokenizer: Any) -> str:
    return R1_ZERO.format(question=question)


@TEMPLATES.register("chat")
def chat(question: str, tokenizer: Any) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer with a chat_template")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@TEMPLATES.register("plain")
def plain(question: str, tokenizer: Any) -> str:
    return question


def encode_prompts(rows, tokenizer: Any, template: str, field: str) -> list[list[int]]:
    """Token ids of each row's prompt: `rows[i][field]` through the template `template`.
    A chat template already holds its special tokens; the others get the tokenizer's (BOS)."""
    fn = TEMPLATES.get(template)
    # canonical rows (r1lab.data.formats) carry the prompt text as `prompt`
    texts = [fn(r["prompt"] if "prompt" in r else r[field], tokenizer) for r in rows]
    return tokenizer(texts, add_special_tokens=template != "chat")["input_ids"]
