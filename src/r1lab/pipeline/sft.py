"""`r1lab train sft`: supervised fine-tuning on a (prompt, completion) dataset.

The stage R1 uses three times: the cold start (a few thousand long chain-of-thought examples
before reasoning RL), the SFT on rejection-sampled data, and distillation into a small student.
Rows come from `data.source` (jsonl / json / parquet / a saved `datasets` folder); the prompt
is `data.prompt_field` through `data.template`, the target is `sft.completion_field` (an eos is
appended). The loss is the mean cross-entropy over completion tokens; the result is an ordinary
Hugging Face checkpoint in `OUT/final`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from r1lab.config import ConfigError, RunConfig, save_config
from r1lab.data.loading import DataError, load_rows
from r1lab.data.templates import TEMPLATES, save_template
from r1lab.models import load_policy
from r1lab.models.loading import compute_dtype
from r1lab.registry import UnknownComponentError
from r1lab.tracking import RunLogger
from r1lab.train.common import seed_everything
from r1lab.train.sft import encode_pairs, train_sft


def run_sft(cfg: RunConfig, out_dir: str | Path, console: Console | None = None,
            heldout: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fine-tune `model` on `data.source`, save `OUT/final`; every row and name is checked first.
    With `heldout` rows (a task's held-out problems) the trained model is evaluated on them
    (`OUT/eval.json`, `result["eval"]`)."""
    console = console or Console()
    d, s = cfg.data, cfg.sft
    if d.source.startswith("synthetic:"):
        raise ConfigError("data.source: `train sft` needs a file of (prompt, completion) rows, "
                          f"not {d.source!r}")
    try:
        template = TEMPLATES.get(d.template)
    except UnknownComponentError as exc:
        raise ConfigError(f"data.template: {exc}") from None
    rows = load_rows(d.source, required=(d.prompt_field, s.completion_field))  # DataError: file:line
    out = Path(out_dir)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model, tokenizer = load_policy(cfg, seed=cfg.train.seed)
    if tokenizer.eos_token_id is None:
        raise ConfigError("model.path: the tokenizer has no eos token, so the model could not "
                          "learn where a completion ends")
    pairs = [(template(r[d.prompt_field], tokenizer), r[s.completion_field]) for r in rows]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:
        lengths = [len(p) + len(c) for p, c in encode_pairs(tokenizer, pairs)]
        i = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[i] > limit:
            raise DataError(f"{d.source} row {i}: prompt + completion is {lengths[i]} tokens, past "
                            f"the model's context of {limit} (max_position_embeddings)")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    with RunLogger(cfg, out, console=console) as logger:  # metrics.jsonl, trackers, alarms
        losses = train_sft(model, tokenizer, pairs, steps=s.steps, batch_size=s.batch_size,
                           lr=s.lr, weight_decay=s.weight_decay, warmup_steps=s.warmup_steps,
                           grad_clip=s.grad_clip, seed=cfg.train.seed, logger=logger,
                           progress=cfg.log.progress, autocast=compute_dtype(cfg.model))
    final = out / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    save_template(final, cfg, tokenizer)  # r1lab_template.json: what serve builds prompts with
    result = {"rows": len(rows), "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
              "final": str(final), "train_seconds": time.perf_counter() - t0}
    if heldout:
        from r1lab.pipeline.run import heldout_eval

        result["eval"] = heldout_eval(cfg, model, tokenizer, heldout, out)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    if logger.stop_reason:
        result["stop_reason"] = logger.stop_reason
    console.print(f"SFT finished: {len(rows)} rows, {len(losses)} steps, loss {losses[0]:.3f} -> "
                  f"{losses[-1]:.3f}; checkpoint {final}", highlight=False)
    return result
