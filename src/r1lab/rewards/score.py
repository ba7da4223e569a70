"""Score existing completions offline: `r1lab score --reward accuracy,format --input IN --output OUT`.

Each input row (JSON lines) needs the completion (`completion`) and what the rewards grade
against (`answer` for math, `tests` for code); field names can be remapped. Rows in a published
format are read as training reads them (`r1lab.data.formats`): a GSM8K `answer` is graded
against the number after `####`, a MATH `solution` against its last `\\boxed{}`, HumanEval /
MBPP / stdin-stdout rows give the code reward its tests. A row without the gold the accuracy
reward needs is an error naming its line, never a silent 0. Each row is written back with
`rewards: {name: score}` and `reward_metrics: {name/key: value}`. Rejection sampling reuses
`score_rows`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from r1lab.data.loading import DataError, read_rows
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
    rewards = list(rewards)
    remapped = [r | {"answer": r.get(answer_key), "tests": r.get(tests_key)} for r in rows]
    if "accuracy" in rewards:
        for i, r in enumerate(remapped):
            if r["answer"] is None:
                raise ValueError(f"row {i + 1}: no gold answer for the accuracy reward: field "
                                 f"{answer_key!r} is missing or null (the row has: {', '.join(map(str, rows[i]))}); "
                                 "set --answer-key")
    composer = RewardComposer([{"name": r} for r in rewards], workers=workers, timeout_s=timeout_s)
    try:
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
    raw = read_rows(input_path)  # DataError names file:line
    rows = published_rows(raw, kwargs.get("answer_key", "answer"))
    try:
        scored, summary = score_rows(rows, names, **kwargs)
    except ValueError as exc:  # "row N: ..." -> the file's own line
        msg = str(exc)
        if msg.startswith("row "):
            n, rest = msg[4:].split(":", 1)
            msg = f"{raw[int(n) - 1][0]}:{rest}"
        raise ValueError(msg) from None
    with open(output_path, "w") as f:
        for row in scored:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return summary


def published_rows(raw: list[tuple[str, Any]], answer_key: str = "answer") -> list[dict]:
    """Rows as written, or, when their columns are a published format (GSM8K, MATH, HumanEval,
    ...), canonical rows whose `answer` / `tests` are that format's gold."""
    from r1lab.data.formats import FormatError, detect, to_canonical

    first = raw[0][1] if raw and isinstance(raw[0][1], dict) else {}
    fmt = detect(first)
    if fmt == "fields":
        return [r for _, r in raw]
    out = []
    for i, (where, row) in enumerate(raw):
        try:
            canon = to_canonical(row, fmt, None, answer_key if answer_key in row else None, index=i)
        except FormatError as exc:
            raise DataError(f"{where}: {fmt} row: {exc}") from None
        out.append(canon)
    return out


def format_summary(summary: dict[str, float]) -> str:
    """One metric per line, aligned, for the terminal."""
    width = max(map(len, summary), default=0)
    return "\n".join(
        f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
        for k, v in sorted(summary.items())
    )
