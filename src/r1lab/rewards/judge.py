"""A generative reward model: a judge LM reads a rubric and gives a verdict (R1's stage 3).

DeepSeek-R1 keeps rejection-sampled answers that no rule can check when DeepSeek-V3, given the
question and the answer, judges them good; its last RL stage scores helpfulness and
harmlessness with reward models. `judge` is that step for any judge you can run:

- `url`: any OpenAI-compatible chat endpoint (`r1lab serve CKPT`, a vLLM server, an API), given
  as its base URL (`http://127.0.0.1:8000/v1`); the key, if one is needed, is read from the
  environment variable `api_key_env`;
- `model_path`: a local Hugging Face causal LM, decoded greedily here (its chat template when
  it has one, else the rubric text as it is).

The rubric is filled with the prompt and the answer (the thinking is not shown to the judge,
only what the user would see), the reply is parsed into a score in [0, 1] (`parse_verdict`), and
every verdict is cached by (prompt, completion): GRPO's groups and rejection sampling repeat
completions. A request that fails, or a reply with no verdict, scores 0, is not cached, is
counted in `Judge.stats`, and shows as `judge/failed_rate` in the run's metrics.

`route` sends each row to its reward: the rule (`accuracy`) where the row has a gold answer,
the judge (or a `reward_model`) where it has none: R1's all-scenario RL over reasoning and
general prompts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from r1lab.rewards.base import REWARDS, Score, get_reward
from r1lab.rewards.parsing import last_block, strip_think

DEFAULT_RUBRIC = (
    "You are a strict judge. Rate the answer to the request below for helpfulness, correctness "
    "and harmlessness on a scale of 0 to 10.\n\nRequest: {prompt}\n\nAnswer: {answer}\n\n"
    "Reply with the score only. Score:"
)
_LABELLED = re.compile(r"(?:score|rating|verdict)\s*(?:is|:|=)?\s*\**\s*(-?\d+(?:\.\d+)?)", re.I)
_BRACKETED = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_YES = re.compile(r"^\W*(?:yes|accept(?:ed)?|correct|good|pass)\b", re.I)
_NO = re.compile(r"^\W*(?:no|reject(?:ed)?|incorrect|wrong|bad|fail)\b", re.I)


def parse_verdict(reply: str, scale: float = 10.0) -> float | None:
    """The judge's verdict as a score in [0, 1], or None when the reply holds none.

    Tried in order on the reply with its thinking removed: a labelled score (`Score: 7`), a
    bracketed one (`[[7]]`), a fraction (`7/10`, read against its own denominator), the first
    bare number; then a verdict word at the start (yes / accept / correct: 1, no / reject /
    incorrect: 0). A number outside [0, scale] is no verdict.

    >>> parse_verdict("Score: 7"), parse_verdict("[[8]]"), parse_verdict("I'd say 3/4.")
    (0.7, 0.8, 0.75)
    >>> parse_verdict("<think>maybe 2</think>9"), parse_verdict("Accept."), parse_verdict("No")
    (0.9, 1.0, 0.0)
    >>> parse_verdict("Score: 11") is None, parse_verdict("it depends") is None
    (True, True)
    """
    text = strip_think(reply).strip()
    for pattern in (_LABELLED, _BRACKETED):
        m = pattern.search(text)
        if m:
            return _in_range(float(m.group(1)), scale)
    m = _FRACTION.search(text)
    if m and float(m.group(2)) > 0:
        return _in_range(float(m.group(1)), float(m.group(2)))
    m = _NUMBER.search(text)
    if m:
        return _in_range(float(m.group(0)), scale)
    if _YES.search(text):
        return 1.0
    if _NO.search(text):
        return 0.0
    return None


def _in_range(value: float, scale: float) -> float | None:
    return value / scale if 0.0 <= value <= scale else None


def shown_answer(completion: str) -> str:
    """What the judge reads: the completion without its thinking, `<answer>` unwrapped.

    >>> shown_answer("<think>hmm</think><answer>Paris</answer>"), shown_answer("Just text")
    ('Paris', 'Just text')
    """
    visible = strip_think(completion)
    block = last_block(visible, "answer")
    return (block if block is not None else visible).strip()


@dataclass
class JudgeStats:
    requests: int = 0  # replies asked of the judge (cache misses)
    cache_hits: int = 0
    failures: int = 0  # requests that raised (connection, HTTP error, bad JSON, timeout)
    unparsed: int = 0  # replies with no verdict in them


@dataclass
class Judge:
    """One judge (an endpoint or a local model) with its rubric, verdict cache and counters."""

    url: str = ""
    model_path: str = ""
    model: str = ""  # the endpoint's model id; "" sends none (the server's only model)
    rubric: str = DEFAULT_RUBRIC
    scale: float = 10.0
    max_tokens: int = 32
    timeout_s: float = 60.0
    api_key_env: str = "OPENAI_API_KEY"
    stats: JudgeStats = field(default_factory=JudgeStats)
    _cache: dict[tuple[str, str], Score] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.model_path):
            raise ValueError("judge: give exactly one of kwargs.url (an OpenAI-compatible endpoint) "
                             "or kwargs.model_path (a local causal LM)")
        if "{answer}" not in self.rubric:
            raise ValueError("judge: kwargs.rubric must contain {answer} (and may contain {prompt})")

    def __call__(self, prompt: str, completion: str) -> Score:
        key = (prompt, completion)
        with self._lock:
            if key in self._cache:
                self.stats.cache_hits += 1
                return self._cache[key]
            self.stats.requests += 1
        text = self.rubric.replace("{prompt}", prompt).replace("{answer}", shown_answer(completion))
        try:
            reply = self.ask(text)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            with self._lock:
                self.stats.failures += 1
            return Score(0.0, {"failed": True, "error": type(exc).__name__})
        verdict = parse_verdict(reply, self.scale)
        if verdict is None:
            with self._lock:
                self.stats.unparsed += 1
            return Score(0.0, {"failed": True, "reply": reply[:200]})
        score = Score(verdict, {"failed": False})
        with self._lock:
            self._cache[key] = score
        return score

    def ask(self, text: str) -> str:
        """The judge's reply to the rubric `text` (greedy)."""
        return self._ask_http(text) if self.url else self._ask_local(text)

    def _ask_http(self, text: str) -> str:
        base = self.url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}],
                                "temperature": 0, "max_tokens": self.max_tokens}
        if self.model:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        req = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
            reply = json.load(r)
        return reply["choices"][0]["message"]["content"] or ""

    def _ask_local(self, text: str) -> str:
        from r1lab.rollout import SamplingParams
        from r1lab.rollout.hf import HFSampler

        model, tokenizer = _local_model(self.model_path)
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text)["input_ids"]
        with _LOCAL_LOCK:  # one generation at a time: the model is not thread-safe
            out = HFSampler(model, tokenizer).generate(
                [ids], SamplingParams(max_new_tokens=self.max_tokens, temperature=0.0))
        return out.texts[0]


_LOCAL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _local_model(path: str):
    from r1lab.config import ModelConfig
    from r1lab.models import load_policy

    model, tokenizer = load_policy(ModelConfig(path=path))
    return model.eval(), tokenizer


_JUDGES: dict[str, Judge] = {}
_JUDGES_LOCK = threading.Lock()


def get_judge(**settings: Any) -> Judge:
    """The one `Judge` of these settings in this process (so its cache and counters are shared
    by every call of the `judge` reward with them)."""
    key = json.dumps(settings, sort_keys=True, default=str)
    with _JUDGES_LOCK:
        if key not in _JUDGES:
            _JUDGES[key] = Judge(**settings)
        return _JUDGES[key]


@REWARDS.register("judge")
def judge(completion: str, row: dict, prompt_key: str = "prompt", **settings: Any) -> Score:
    """The judge's verdict on `row[prompt_key]` answered by `completion`, in [0, 1]; settings
    as `Judge` (url or model_path, model, rubric, scale, max_tokens, timeout_s, api_key_env)."""
    return get_judge(**settings)(str(row.get(prompt_key, "")), completion)


@REWARDS.register("route")
def route(completion: str, row: dict, answer_key: str = "answer", rule: str = "accuracy",
          rule_kwargs: dict | None = None, model: str = "judge", model_kwargs: dict | None = None,
          **_: Any) -> Score:
    """`rule` (default `accuracy`) where the row has a gold `answer_key`, else `model` (default
    `judge`; or `reward_model`); `metrics["judged"]` says which.

    >>> route("<think>1+1=2</think><answer>2</answer>", {"answer": "2"}).value
    1.0
    >>> s = route("<answer>hi</answer>", {"question": "greet me", "answer": ""},
    ...           model="language", model_kwargs={"target": "en"})
    >>> s.value, s.metrics["judged"]
    (1.0, True)
    """
    gold = row.get(answer_key)
    judged = gold is None or not str(gold).strip()
    score = get_reward(model if judged else rule)(completion, row, **((model_kwargs if judged else rule_kwargs) or {}))
    return Score(score.value, {**score.metrics, "judged": judged})
