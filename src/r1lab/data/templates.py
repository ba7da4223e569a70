"""Prompt templates: how a question becomes the text the policy continues.

`r1_zero` is the paper's template (Table 1 of DeepSeek-R1): the model is told to think inside
`<think>` and answer inside `<answer>`, and nothing else about how to reason. `tiny` is the same
idea cut to a few tokens for the from-scratch demo model. `chat` uses the tokenizer's own chat
template, for instruction-tuned checkpoints, with r1lab's system message (`SYSTEM`). `auto`
(the default of `data.template`) is `chat` for a tokenizer with a chat template, `tiny` for the
demo's character tokenizer, `r1_zero` for any other.

The template a run used, system message included, is saved with every checkpoint
(`save_template`: `r1lab_template.json` beside the weights); `r1lab serve` builds its prompts
from it (`load_template`, `saved_prompt`), so the served policy sees what it was trained on.

>>> TEMPLATES.get("tiny")("12+30", None)
'Q:12+30\\nA:'
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from pathlib import Path
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


def is_tiny_tokenizer(tokenizer: Any) -> bool:
    """True for the demo's character tokenizer (`r1lab.models.tiny.build_char_tokenizer`), also
    when reloaded from a checkpoint: the same small vocabulary."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) or len(tokenizer) > 256:
        return False
    known = getattr(tokenizer, "_r1lab_is_tiny", None)  # asked once per tokenizer object
    if known is None:
        known = tokenizer.get_vocab() == _tiny_vocab()
        with contextlib.suppress(AttributeError):
            tokenizer._r1lab_is_tiny = known
    return known


@functools.cache
def _tiny_vocab() -> dict[str, int]:
    from r1lab.models.tiny import build_char_tokenizer

    return build_char_tokenizer().get_vocab()


def resolve(template: str, tokenizer: Any) -> str:
    """The concrete template `template` means for `tokenizer` (only `auto` depends on it).

    >>> resolve("auto", None), resolve("r1_zero", None)
    ('r1_zero', 'r1_zero')
    """
    TEMPLATES.get(template)  # an unknown name fails here, listing the valid ones
    if template != "auto":
        return template
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return "chat"
    return "tiny" if is_tiny_tokenizer(tokenizer) else "r1_zero"


@TEMPLATES.register("auto")
def auto(question: str, tokenizer: Any) -> str:
    return TEMPLATES.get(resolve("auto", tokenizer))(question, tokenizer)


TEMPLATE_FILE = "r1lab_template.json"
_FORMATS = {"tiny": "Q:{question}\nA:", "r1_zero": R1_ZERO, "plain": "{question}"}


def template_record(template: str, tokenizer: Any, prompt_field: str = "question") -> dict[str, Any]:
    """What a checkpoint stores about its prompts: the resolved name, and the system message
    (chat) or the format string (others) that turned a question into the prompt text.

    >>> template_record("tiny", None)["format"]
    'Q:{question}\\nA:'
    """
    name = resolve(template, tokenizer)
    record: dict[str, Any] = {"template": name, "configured": template, "prompt_field": prompt_field}
    if name == "chat":
        record["system"] = SYSTEM
    elif name in _FORMATS:
        record["format"] = _FORMATS[name]
    return record


def save_template(path: str | Path, cfg: Any, tokenizer: Any = None) -> Path:
    """Write `r1lab_template.json` into the checkpoint folder `path` for the run config `cfg`
    (its `data.template`, resolved with `tokenizer`); returns the file."""
    record = template_record(cfg.data.template, tokenizer, cfg.data.prompt_field)
    out = Path(path) / TEMPLATE_FILE
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def load_template(path: str | Path) -> dict[str, Any] | None:
    """The template record a checkpoint was saved with, or None (an older checkpoint)."""
    f = Path(path) / TEMPLATE_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text())
    except ValueError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("template"), str):
        raise ValueError(f"{f}: expected an object with a 'template' name")
    return record


def saved_prompt(record: dict[str, Any], messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The prompt text for chat `messages` exactly as the run built its training prompts: a chat
    run's system message goes first when the client sends none; a plain template formats the
    last user message.

    >>> saved_prompt({"template": "tiny", "format": "Q:{question}\\nA:"}, [{"role": "user", "content": "1+2"}], None)
    'Q:1+2\\nA:'
    """
    if record["template"] == "chat":
        if record.get("system") and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": record["system"]}, *messages]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    fmt = record.get("format")
    if isinstance(fmt, str):
        return fmt.replace("{question}", question)
    return TEMPLATES.get(record["template"])(question, tokenizer)


def prompt_of(row: dict[str, Any], field: str) -> str:
    """A row's prompt text: its canonical `prompt` (r1lab.data.formats), else `row[field]`
    (rows built by hand, e.g. a synthetic task's `question`).

    >>> prompt_of({"prompt": "1+1", "question": "x"}, "question"), prompt_of({"q": "2+2"}, "q")
    ('1+1', '2+2')
    """
    return row["prompt"] if "prompt" in row else row[field]


def encode_prompts(rows, tokenizer: Any, template: str, field: str) -> list[list[int]]:
    """Token ids of each row's prompt: `rows[i][field]` through the template `template`.
    A chat template already holds its special tokens; the others get the tokenizer's (BOS)."""
    template = resolve(template, tokenizer)
    fn = TEMPLATES.get(template)
    texts = [fn(prompt_of(r, field), tokenizer) for r in rows]
    return tokenizer(texts, add_special_tokens=template != "chat")["input_ids"]
