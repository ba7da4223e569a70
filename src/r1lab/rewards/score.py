"""Score existing completions offline: `r1lab score --reward accuracy,format --input IN --output OUT`.

Each input row (JSON lines) needs the completion (`completion`) and what the rewards grade
against (`answer` for math, `tests` for code); field names can be remapped. Each row is written
back with `rewards: {name: score}` and `reward_metrics: {name/key: value}`. Rejection sampling
reuses `score_rows`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from r1lab.rewards.base import get_reward
from r1lab.rewards.compose import RewardComposer


def score_rows(
    rows: list[dict],
    rewards: Iterable[str],
    completion_key: str = "completion",
    answer_key: str = "answer",
    tests_key: str = "tests",
    workers: int = 1,
    timeout_s: float = 10.0,
) -> tuple[list[dict], dict[str, float]]:
    """Add `rewards` and `reward_metrics` to copies of `rows`; returns them and the summary."""
    rewards = list(rewards)
    for name in rewards:  # a reward that can check the rows first (code: the tests key) does
        check = getattr(get_reward(name), "check_rows", None)
        if check is not None:
            check(rows, tests_key=tests_key, answer_key=answer_key)
    composer = RewardComposer([{"name": r} for r in rewards], workers=workers, timeout_s=timeout_s)
    try:
        remapped = [r | {"answer": r.get(answer_key), "tests": r.get(tests_key)} for r in rows]
        batch = composer([str(r.get(completion_key) or "") for r in rows], remapped)
    finally:
        composer.close()
    out = []
    for i, row in enumerate(rows):
        scores = {name: values[i] for name, values in batch.components.items()}
        out.append(row | {"rewards": scores, "reward_metrics": batch.per_sample_metrics[i]})
    return out, batch.metrics | {"rows": len(rows)}


def score_file(
    input_path: str | Path, output_path: str | Path, rewards: str | Iterable[str], **kwargs: Any
) -> dict[str, float]:
    """Score a JSONL file into another; `rewards` is "accuracy,format" or a list of names."""
    names = [r.strip() for r in rewards.split(",")] if isinstance(rewards, str) else list(rewards)
    with open(input_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    scored, summary = score_rows(rows, names, **kwargs)
    with open(output_path, "w") as f:
        for row in scored:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return summary


def format_summary(summary: dict[str, float]) -> str:
    """One metric per line, aligned, for the terminal."""
    width = max(map(len, summary), default=0)
    return "\n".join(
        f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
        for k, v in sorted(summary.items())
    )
