"""`r1lab sample`: rejection sampling, the data step of R1's stage 3 and of distillation.

The policy (or a teacher) answers every training prompt `reject.samples_per_prompt` times;
every completion is scored by the run's rewards; a completion is kept when each component named
in `reject.min_scores` reaches its threshold (by default: the answer is correct); per prompt at
most `reject.keep_per_prompt` distinct completions are kept. Written to the run folder:

* `sft.jsonl`: the kept rows, `{<prompt_field>, <answer_field>, completion, rewards}`, ready
  for `r1lab train sft` (its `sft.completion_field` defaults to `completion`);
* `samples.jsonl`: every sample with its scores and whether it was kept;
* `summary.json`: prompts, samples, pass rate, kept rows, prompts with at least one kept.

Rows no rule can check (writing, QA, role-play: no gold answer) are sampled too when the run has
a reward that needs no gold: `judge` (a judge LM, R1's DeepSeek-V3 verdict), `route` (rules
where a gold exists, the judge where not) or `reward_model`; `summary.json` counts the rows
without gold (`judged_prompts`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from r1lab.config import ConfigError, RunConfig, save_config
from r1lab.data.templates import encode_prompts
from r1lab.data.validate import check_config, check_context, check_tokenizer
from r1lab.models import load_policy
from r1lab.pipeline.run import load_prompt_rows
from r1lab.rewards import RewardComposer
from r1lab.rollout import SamplingParams, build_engine
from r1lab.train.common import JsonlWriter, seed_everything
from r1lab.train.progress import StepProgress


def has_gold(row: dict[str, Any]) -> bool:
    gold = row.get("answer")
    return gold is not None and bool(str(gold).strip())


def run_sample(cfg: RunConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Sample, score, filter; write sft.jsonl / samples.jsonl / summary.json to `out_dir`."""
    console = console or Console()
    d, r, ro = cfg.data, cfg.reject, cfg.rollout
    check_config(cfg)
    rows = load_prompt_rows(cfg)[0][: r.num_prompts]
    rewards = RewardComposer(cfg.rewards.components, workers=cfg.rewards.workers,
                             timeout_s=cfg.rewards.timeout_s)
    unknown = sorted(set(r.min_scores) - set(rewards.labels))
    if unknown:
        raise ConfigError(f"reject.min_scores: {', '.join(unknown)} is not a reward of this run "
                          f"(rewards.components: {', '.join(rewards.labels)})")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model, tokenizer = load_policy(cfg, seed=cfg.train.seed)
    check_tokenizer(tokenizer, model, cfg)
    check_context(rows, tokenizer, model, cfg)
    engine = build_engine(ro.engine, model, tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    n, t0 = r.samples_per_prompt, time.perf_counter()
    kept_rows = passed = covered = 0
    sft, samples = JsonlWriter(out / "sft.jsonl"), JsonlWriter(out / "samples.jsonl")
    try:
        with StepProgress("sample", len(rows), enabled=cfg.log.progress) as bar:
            for start in range(0, len(rows), r.batch_prompts):
                chunk = rows[start:start + r.batch_prompts]
                params = SamplingParams(n=n, max_new_tokens=ro.max_new_tokens,
                                        temperature=ro.temperature, top_p=ro.top_p,
                                        top_k=ro.top_k, stop=tuple(ro.stop),
                                        seed=cfg.train.seed * 1_000_003 + start)
                batch = engine.generate(encode_prompts(chunk, tokenizer, d.template, d.prompt_field),
                                        params)
                lengths = batch.lengths.long().tolist()
                scored = rewards(batch.texts, [{**chunk[i // n], "completion_tokens": lengths[i]}
                                               for i in range(len(batch.texts))])
                for p, row in enumerate(chunk):
                    seen: set[str] = set()
                    for i in range(p * n, p * n + n):
                        scores = {k: v[i] for k, v in scored.components.items()}
                        ok = all(scores[k] >= t for k, t in r.min_scores.items())
                        passed += ok
                        keep = ok and batch.texts[i] not in seen and len(seen) < r.keep_per_prompt
                        if keep:
                            seen.add(batch.texts[i])
                            sft.write({d.prompt_field: row["prompt"],
                                       d.answer_field: row.get(d.answer_field),
                                       "completion": batch.texts[i], "rewards": scores})
                        samples.write({"prompt_index": start + p, d.prompt_field: row["prompt"],
                                       "completion": batch.texts[i], "rewards": scores,
                                       "passed": ok, "kept": keep})
                    kept_rows += len(seen)
                    covered += bool(seen)
                bar.update(advance=len(chunk), kept=str(kept_rows))
    finally:
        sft.close()
        samples.close()
        rewards.close()
    summary = {"prompts": len(rows), "samples": len(rows) * n,
               "pass_rate": passed / max(1, len(rows) * n), "kept_rows": kept_rows,
               "prompts_covered": covered,
               "judged_prompts": sum(not has_gold(row) for row in rows),
               "seconds": time.perf_counter() - t0,
               "sft": str(out / "sft.jsonl")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"rejection sampling: {len(rows)} prompts x {n}, pass rate "
                  f"{summary['pass_rate']:.3f}, kept {kept_rows} rows ({covered} prompts); "
                  f"{out / 'sft.jsonl'}", highlight=False)
    return summary

