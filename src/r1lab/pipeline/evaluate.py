"""`r1lab eval CONFIG`: evaluate a checkpoint the way the paper does.

The model is `model.path` (any local HF causal LM, e.g. a run's `final/` or `rl/`); the problems
are the held-out split of a synthetic task, or every row of a dataset file. Each protocol of
`eval` (greedy; k samples at T=0.6 / top-p 0.95; ...) gives pass@1 averaged over k samples,
cons@k (majority vote) and unbiased pass@k.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from r1lab.config import RunConfig, save_config
from r1lab.data.templates import TEMPLATES
from r1lab.evaluation import evaluate, paper_protocols
from r1lab.models import load_policy
from r1lab.pipeline.run import load_prompt_rows


def run_eval(cfg: RunConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    template = TEMPLATES.get(cfg.data.template)
    train, heldout = load_prompt_rows(cfg)
    rows = (heldout or train)[: cfg.eval.num_problems]
    model, tokenizer = load_policy(cfg, seed=cfg.train.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    field = cfg.data.prompt_field
    results = evaluate(model, tokenizer, rows, lambda r: template(r[field], tokenizer),
                       paper_protocols(cfg.eval), seed=cfg.train.seed,
                       max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
    (out / "eval.json").write_text(json.dumps(results, indent=2))
    table = Table(title=f"{cfg.model.path or 'tiny model'}: {len(rows)} problems")
    for col in ("protocol", "pass@1", "cons@k", "pass@k", "thinks", "mean length"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        k = r["k"]
        table.add_row(name, f"{r['pass1']:.3f}", f"{r[f'cons@{k}']:.3f}", f"{r[f'pass@{k}']:.3f}",
                      f"{r['think_rate']:.0%}", f"{r['mean_len']:.1f}")
    console.print(table)
    return results
