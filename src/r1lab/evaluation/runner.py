"""Run a model over held-out problems under the paper's sampling protocols.

DeepSeek-R1 reports pass@1 as the mean correctness over k samples per problem at temperature
0.6 and top-p 0.95 (greedy decoding repeats itself on long reasoning), and cons@64 as majority
vote over 64 samples. A `Protocol` is one such setting; `evaluate` runs several and returns, for
each, pass@1 with a 95% bootstrap interval over problems (seeded), cons@k, unbiased pass@k, the
share of completions that think and their mean length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from r1lab.config import EvalConfig
from r1lab.evaluation.metrics import bootstrap_ci, majority_vote, pass_at_k
from r1lab.rewards import get_reward
from r1lab.rollout import SamplingParams, build_engine
from r1lab.train.common import thinks


@dataclass(frozen=True)
class Protocol:
    name: str
    temperature: float
    top_p: float = 1.0
    k: int = 1


def paper_protocols(cfg: EvalConfig) -> list[Protocol]:
    """greedy, then k samples at each configured temperature (top-p below T=1, as the paper)."""
    out = [Protocol("greedy", 0.0)] if cfg.greedy else []
    for t in cfg.temperatures:
        out.append(Protocol(f"T={t:g}", t, cfg.top_p if t < 1.0 else 1.0, cfg.k))
    return out


def evaluate(
    model, tokenizer, rows: Sequence[dict[str, Any]], prompt: Callable[[dict[str, Any]], str],
    protocols: Sequence[Protocol], *, max_new_tokens: int = 64, seed: int = 0,
    batch_size: int = 256, reward: str = "accuracy", engine: str = "hf",
) -> dict[str, dict[str, Any]]:
    """{protocol name: {pass1, cons, pass_at_k, think_rate, mean_len, seconds, samples}}"""
    sampler = build_engine(engine, model, tokenizer)
    score = get_reward(reward)
    ids = tokenizer([prompt(r) for r in rows])["input_ids"]
    results: dict[str, dict[str, Any]] = {}
    for proto in protocols:
        t0 = time.perf_counter()
        per_problem = max(1, batch_size // proto.k)
        correct: list[list[bool]] = []
        answers: list[list[str | None]] = []
        texts: list[str] = []
        lengths: list[float] = []
        for start in range(0, len(rows), per_problem):
            chunk = list(range(start, min(len(rows), start + per_problem)))
            params = SamplingParams(n=proto.k, max_new_tokens=max_new_tokens,
                                    temperature=proto.temperature, top_p=proto.top_p,
                                    seed=seed * 7919 + start)
            out = sampler.generate([ids[i] for i in chunk], params)
            lengths += out.lengths.tolist()
            for j, i in enumerate(chunk):
                group = out.texts[j * proto.k:(j + 1) * proto.k]
                scores = [score(t, rows[i]) for t in group]
                correct.append([s.value >= 1.0 for s in scores])
                answers.append([s.metrics.get("extracted_answer") for s in scores])
                texts += group
        n = len(rows)
        per_problem_pass1 = [sum(c) / len(c) for c in correct]
        results[proto.name] = {
            **asdict(proto),
            "pass1": sum(per_problem_pass1) / n,
            "pass1_ci": list(bootstrap_ci(per_problem_pass1, seed=seed)),
            f"cons@{proto.k}": sum(majority_vote(a, c) for a, c in zip(answers, correct)) / n,
            f"pass@{proto.k}": sum(pass_at_k(len(c), sum(c), len(c)) for c in correct) / n,
            "think_rate": sum(thinks(t) for t in texts) / len(texts),
            "mean_len": sum(lengths) / len(lengths),
            "seconds": time.perf_counter() - t0,
            "samples": [{"problem": rows[i].get("prompt", rows[i].get("question")),
                         "answer": rows[i].get("answer"),
                         "completion": texts[i * proto.k], "correct": correct[i][0]}
                        for i in range(min(5, n))],
        }
    return results
