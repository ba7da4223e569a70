"""`r1lab eval CONFIG`: evaluate a checkpoint the way the paper does, on one or more benchmarks.

The model is `model.path` (any local HF causal LM, e.g. a run's `final/` or `rl/`). The problems
are each file of `eval.benchmarks` (GSM8K, MATH-500, AIME, GPQA, HumanEval, MBPP, ... in any
`data.format`, detected from the columns), or, without benchmarks, the run's held-out rows
(`data.eval_source` / `data.eval_fraction` / a synthetic task's held-out split), else its data
rows. Each protocol of `eval` (greedy; k samples at T=0.6 / top-p 0.95; ...) gives pass@1
averaged over k samples with a 95% bootstrap interval over problems, cons@k (majority vote) and
unbiased pass@k, in one table per benchmark. Math formats are graded by the accuracy reward,
code formats by the code reward (pass iff every test passes). Each benchmark's prompts are
checked for word n-gram overlap with the training prompts (`data.source`), and the overlap is
reported beside the table. `eval.json` is {benchmark: {problems, reward, protocols,
contamination}}; without benchmarks it is {protocol: metrics} of the run's rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from r1lab.config import RunConfig, save_config
from r1lab.data.loading import load_dataset
from r1lab.data.prompts import check_fields, load_prompt_rows
from r1lab.data.templates import TEMPLATES
from r1lab.evaluation import evaluate, paper_protocols
from r1lab.evaluation.metrics import contamination
from r1lab.models import load_policy

CODE_FORMATS = ("humaneval", "mbpp", "stdio")


def benchmark_rows(cfg: RunConfig) -> dict[str, tuple[list[dict[str, Any]], str]]:
    """{benchmark name: (canonical rows, reward)}; checked before the model loads."""
    d = cfg.data
    out: dict[str, tuple[list[dict[str, Any]], str]] = {}
    for path in cfg.eval.benchmarks:
        ds = load_dataset(path, d.format, d.prompt_field, d.answer_field, d.seed)
        reward = "code" if ds.format in CODE_FORMATS else "accuracy"
        print(f"data: {path}: {len(ds.rows)} rows, format {ds.format} "
              f"({'detected' if d.format == 'auto' else 'data.format'}), graded by {reward}",
              file=sys.stderr, flush=True)
        check_fields(ds.rows, ds.wheres, _with_reward(cfg, reward))
        name = Path(path.split("@", 1)[0]).stem + (f"@{path.split('@', 1)[1]}" if "@" in path else "")
        while name in out:
            name += "'"
        out[name] = (ds.rows[: cfg.eval.num_problems], reward)
    return out


def _with_reward(cfg: RunConfig, reward: str) -> RunConfig:
    return cfg.model_copy(update={"rewards": cfg.rewards.model_copy(
        update={"components": [type(cfg.rewards.components[0])(name=reward)]})})


def _train_prompts(cfg: RunConfig) -> list[str]:
    """The training prompts the contamination check compares against (none for no data)."""
    try:
        rows = load_prompt_rows(_with_reward(cfg, "format"))[0]
    except (ValueError, OSError):
        return []
    return [str(r["prompt"]) for r in rows]


def run_eval(cfg: RunConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Evaluate `model.path` on every benchmark; writes `eval.json` and prints a table each."""
    console = console or Console()
    if cfg.eval.benchmarks:
        sets = benchmark_rows(cfg)
        train_prompts = _train_prompts(cfg)
    else:
        train, heldout = load_prompt_rows(cfg)
        sets = {"heldout" if heldout else "data": ((heldout or train)[: cfg.eval.num_problems], "accuracy")}
        train_prompts = [str(r["prompt"]) for r in train] if heldout else []
    model, tokenizer = load_policy(cfg, seed=cfg.train.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    template = TEMPLATES.get(cfg.data.template)
    results: dict[str, Any] = {}
    for name, (rows, reward) in sets.items():
        res = evaluate(model, tokenizer, rows, lambda r: template(r["prompt"], tokenizer),
                       paper_protocols(cfg.eval), seed=cfg.train.seed, reward=reward,
                       max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
        overlap = contamination(train_prompts, [str(r["prompt"]) for r in rows],
                                n=cfg.eval.contamination_ngram) if train_prompts else None
        results[name] = {"problems": len(rows), "reward": reward, "protocols": res,
                         "contamination": overlap}
        console.print(_table(name, rows, res, overlap, cfg))
    if not cfg.eval.benchmarks:  # the run's own rows: eval.json is {protocol: metrics}, as before
        results = next(iter(results.values()))["protocols"]
    (out / "eval.json").write_text(json.dumps(results, indent=2))
    return results


def _table(name: str, rows: list, res: dict[str, Any], overlap: dict | None, cfg: RunConfig) -> Table:
    title = f"{name}: {len(rows)} problems, {cfg.model.path or 'tiny model'}"
    caption = ("contamination: not checked (no training prompts)" if overlap is None else
               f"contamination: {overlap['contaminated']}/{overlap['problems']} problems share a "
               f"{overlap['n']}-gram with the training prompts")
    table = Table(title=title, caption=caption)
    for col in ("protocol", "pass@1", "95% CI", "cons@k", "pass@k", "thinks", "mean length"):
        table.add_column(col, justify="right")
    for proto, r in res.items():
        k = r["k"]
        lo, hi = r["pass1_ci"]
        table.add_row(proto, f"{r['pass1']:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{r[f'cons@{k}']:.3f}",
                      f"{r[f'pass@{k}']:.3f}", f"{r['think_rate']:.0%}", f"{r['mean_len']:.1f}")
    return table
