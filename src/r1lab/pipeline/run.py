"""`r1lab train grpo CONFIG`: one GRPO run on any local HF causal LM and any prompt dataset."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from r1lab.config import RunConfig, save_config
from r1lab.data.loading import load_rows
from r1lab.data.tasks import generate
from r1lab.data.templates import TEMPLATES
from r1lab.evaluation import evaluate, paper_protocols
from r1lab.models import load_policy
from r1lab.train.common import seed_everything
from r1lab.train.grpo import GRPOTrainer


def load_prompt_rows(cfg: RunConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows). Synthetic sources give a disjoint held-out split; a file
    source gives its rows for training and no held-out set (evaluate with `r1lab eval`)."""
    d = cfg.data
    if d.source.startswith("synthetic:"):
        task = d.source.split(":", 1)[1]
        kw = {"seed": d.seed, "min_digits": d.min_digits, "max_digits": d.max_digits}
        train = [p.row() for p in generate(task, d.train_size, split="train", **kw)]
        heldout = [p.row() for p in generate(task, d.heldout_size, split="heldout", **kw)]
        return train, heldout
    rows = load_rows(d.source, required=(d.prompt_field, d.answer_field))
    return rows, []


def run_grpo(cfg: RunConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    TEMPLATES.get(cfg.data.template)  # fail on a bad template name before loading anything
    train_rows, heldout = load_prompt_rows(cfg)
    save_config(cfg, out / "config.yaml")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model, tokenizer = load_policy(cfg.model, seed=cfg.train.seed)
    t0 = time.perf_counter()
    trainer = GRPOTrainer(cfg, model, tokenizer, train_rows, out)
    history = trainer.fit()
    final = trainer.save(out / "final")
    result: dict[str, Any] = {"steps": len(history), "final": str(final),
                              "train_seconds": time.perf_counter() - t0}
    if heldout:
        template = TEMPLATES.get(cfg.data.template)
        res = evaluate(model, tokenizer, heldout[: cfg.eval.num_problems],
                       lambda r: template(r[cfg.data.prompt_field], tokenizer),
                       paper_protocols(cfg.eval),
                       max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
        (out / "eval.json").write_text(json.dumps(res, indent=2))
        result["eval"] = {k: v["pass1"] for k, v in res.items()}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    console.print(f"GRPO finished: {result}")
    return result
