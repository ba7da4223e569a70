"""The prompt rows of a run: `load_prompt_rows(cfg) -> (train rows, held-out rows)`, canonical.

Every command that samples prompts (`train grpo`, `sample`, `pipeline r1`, `distill`, `eval`)
reads them here, so `data.prompt_field`, `data.answer_field` and `data.format` reach every
reward, evaluation and log the same way: each row has `prompt` and `answer`
(`r1lab.data.formats`). Before any run starts, the rewards' needs are checked against the rows
(`check_fields`): a gold answer for `accuracy`, tests for `code`; a row without them is an error
naming the file and line, never a per-sample KeyError scored 0.

Held-out rows: a synthetic task's disjoint held-out split; for file data `data.eval_source`
(another file), else `data.eval_fraction` of the file (a seeded draw), else none.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import Any

from r1lab.config import ConfigError, RunConfig
from r1lab.data.formats import FORMATS, to_canonical
from r1lab.data.loading import DataError, Dataset, load_dataset

# reward -> the canonical field every row must carry for it
NEEDS = {"accuracy": "answer", "code": "tests"}


def _log(msg: str) -> None:
    print(f"data: {msg}", file=sys.stderr, flush=True)


def _file(cfg: RunConfig, source: str) -> Dataset:
    d = cfg.data
    ds = load_dataset(source, d.format, d.prompt_field, d.answer_field, d.seed)
    how = "detected" if d.format == "auto" else "data.format"
    _log(f"{source}: {len(ds.rows)} rows, format {ds.format} ({how}; {FORMATS[ds.format].describe})")
    return ds


def load_prompt_rows(cfg: RunConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows), canonical and checked against the configured rewards."""
    d = cfg.data
    if d.source.startswith("synthetic:"):
        from r1lab.data.tasks import generate

        for key, value, unset in (("eval_source", d.eval_source, None), ("eval_fraction", d.eval_fraction, 0.0),
                                  ("format", d.format, "auto")):
            if value != unset:
                raise ConfigError(f"data.{key}: {value!r} applies to file data; a synthetic task has "
                                  "its own held-out split (data.heldout_size)")

        task = d.source.split(":", 1)[1]
        kw = {"seed": d.seed, "min_digits": d.min_digits, "max_digits": d.max_digits}
        train = [_synthetic(p.row(), cfg) for p in generate(task, d.train_size, split="train", **kw)]
        heldout = [_synthetic(p.row(), cfg) for p in generate(task, d.heldout_size, split="heldout", **kw)]
        return train, heldout
    ds = _file(cfg, d.source)
    rows, wheres = ds.rows, ds.wheres
    heldout: list[dict[str, Any]] = []
    held_wheres: list[str] = []
    if d.eval_source:
        ev = _file(cfg, d.eval_source)
        heldout, held_wheres = ev.rows, ev.wheres
    elif d.eval_fraction > 0:
        order = list(range(len(rows)))
        random.Random(d.seed).shuffle(order)
        n_held = max(1, round(len(rows) * d.eval_fraction))
        if n_held >= len(rows):
            raise ConfigError(f"data.eval_fraction: {d.eval_fraction} of {len(rows)} rows leaves none to train on")
        held = set(order[:n_held])
        heldout = [rows[i] for i in sorted(held)]
        held_wheres = [wheres[i] for i in sorted(held)]
        rows = [r for i, r in enumerate(rows) if i not in held]
        wheres = [w for i, w in enumerate(wheres) if i not in held]
        _log(f"{d.source}: {len(heldout)} rows held out (data.eval_fraction {d.eval_fraction}, "
             f"seed {d.seed}), {len(rows)} to train on")
    check_fields(rows, wheres, cfg)
    if heldout:
        check_fields(heldout, held_wheres, cfg)
    return rows, heldout


def _synthetic(row: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """A synthetic task's row (`question`, `answer`, `key`) with its canonical `prompt`."""
    return to_canonical(row, "fields", cfg.data.prompt_field if cfg.data.prompt_field in row
                        else "question", "answer")


def check_fields(rows: Sequence[dict[str, Any]], wheres: Sequence[str], cfg: RunConfig) -> None:
    """Each configured reward finds what it reads in every row (a reward's `answer_key` /
    `tests_key` kwargs are honoured); the first row that lacks it is a DataError naming the
    reward's config key, the file and line, and the fields the row has. In mixed data (math and
    code rows, R1's all-scenario RL) a row may lack one reward's field when it has another's."""
    keys = {i: c.kwargs.get("answer_key" if NEEDS[c.name] == "answer" else "tests_key", NEEDS[c.name])
            for i, c in enumerate(cfg.rewards.components) if c.name in NEEDS}
    for i, comp in enumerate(cfg.rewards.components):
        need = NEEDS.get(comp.name)
        if need is None:
            continue
        key = keys[i]
        for row, where in zip(rows, wheres):
            if row.get(key) is None and all(row.get(k) is None for k in keys.values()):
                hint = (f"data.answer_field: {cfg.data.answer_field!r}" if need == "answer"
                        else "a code format (data.format: humaneval | mbpp | stdio)")
                raise DataError(
                    f"rewards.components.{i}.name: {comp.name} needs {key!r} in every row, but "
                    f"{where} has none ({hint}; the row has: {', '.join(map(str, row))})")
        if comp.name == "code":
            from r1lab.rewards.code import check_code_rows

            try:
                check_code_rows(list(rows), tests_key=key)
            except ValueError as exc:
                raise DataError(f"rewards.components.{i}: {exc}") from None
