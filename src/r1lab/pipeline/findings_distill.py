"""`r1lab demo --scenario distillation`: for a small model, distilling a strong reasoner vs RL.

DeepSeek-R1 (section 4.1) compares, for Qwen-32B, large-scale RL on the model itself with SFT on
the large R1's samples, and finds distillation better. In miniature, on the demo's task:

- the teacher (`scenario.teacher_tiny`, larger) is pre-trained on the demo's corpus and trained
  with R1-Zero (GRPO, accuracy + format);
- the student (`model.tiny`, smaller) is pre-trained on the same corpus for the same steps;
- (a) RL: the student base gets R1-Zero for `train.steps` steps;
- (b) distillation: the teacher answers the training prompts (`reject.*`: kept when correct and
  well formed), and the student base is fine-tuned on those samples, once for as many steps as
  (a) took (equal steps) and once for as many as fit in (a)'s compute (equal compute: the RL's
  sampled and trained tokens at 2N + 6N FLOPs per token against 6N per SFT token, N the
  student's parameters; the teacher's own cost is not charged, as in the paper).

All are evaluated on the same held-out problems (T=1, k samples, `findings.behaviour`).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from r1lab.analysis.report import read_jsonl
from r1lab.config import RunConfig
from r1lab.data.templates import TEMPLATES
from r1lab.pipeline.findings import (
    SCENARIOS,
    behaviour,
    findings_table,
    load_base,
    prepare,
    sample_heldout,
    train_rl,
)
from r1lab.rewards import RewardComposer
from r1lab.rollout import SamplingParams, build_engine
from r1lab.train.common import seed_everything
from r1lab.train.sft import train_sft


def teacher_samples(cfg: RunConfig, model, tokenizer, rows: list[dict[str, Any]], seed: int) -> list[tuple[str, str]]:
    """(prompt text, completion) pairs: the teacher's samples of `rows` that pass every
    threshold of `reject.min_scores`, at most `reject.keep_per_prompt` distinct ones per row."""
    r, template = cfg.reject, TEMPLATES.get(cfg.data.template)
    rewards = RewardComposer(cfg.rewards.components)
    engine = build_engine(cfg.rollout.engine, model, tokenizer)
    pairs: list[tuple[str, str]] = []
    rows = rows[: r.num_prompts]
    for start in range(0, len(rows), r.batch_prompts):
        chunk = rows[start:start + r.batch_prompts]
        prompts = [template(row["prompt"], tokenizer) for row in chunk]
        params = SamplingParams(n=r.samples_per_prompt, max_new_tokens=cfg.rollout.max_new_tokens,
                                temperature=cfg.rollout.temperature, seed=seed * 1_000_003 + start)
        texts = engine.generate(tokenizer(prompts)["input_ids"], params).texts
        n = r.samples_per_prompt
        scored = rewards(texts, [chunk[i // n] for i in range(len(texts))])
        for p in range(len(chunk)):
            kept: list[str] = []
            for i in range(p * n, p * n + n):
                ok = all(scored.components[k][i] >= t for k, t in r.min_scores.items())
                if ok and texts[i] not in kept and len(kept) < r.keep_per_prompt:
                    kept.append(texts[i])
            pairs += [(prompts[p], t) for t in kept]
    return pairs


def equal_compute_steps(metrics: list[dict[str, Any]], prompt_len: float, cfg: RunConfig,
                        sft_tokens_per_example: float) -> int:
    """SFT steps whose FLOPs match the RL run's: per RL step B*G*(prompt + completion) tokens
    sampled (2N each) and trained (6N each); per SFT step batch * tokens per example at 6N.

    >>> from r1lab.config import RunConfig
    >>> cfg = RunConfig.model_validate({"train": {"batch_size": 2}, "rollout": {"group_size": 4},
    ...                                 "sft": {"batch_size": 8}})
    >>> equal_compute_steps([{"completion_len": 10.0}] * 3, 2.0, cfg, 16.0)  # 3*8*12*8 / (6*8*16)
    3
    """
    per_step = cfg.train.batch_size * cfg.rollout.group_size
    rl_flops = sum(per_step * (prompt_len + m["completion_len"]) * 8 for m in metrics)
    return max(1, round(rl_flops / (6 * cfg.sft.batch_size * sft_tokens_per_example)))


@SCENARIOS.register("distillation")
def run_distillation(cfg: RunConfig, out_dir: str | Path, seed: int = 1, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    if cfg.scenario.teacher_tiny is None:
        raise ValueError("scenario distillation: scenario.teacher_tiny (the larger teacher's size) is needed")
    wall0 = time.perf_counter()
    cfg, out, train_rows, heldout = prepare(cfg, out_dir, seed)
    timings: dict[str, float] = {}
    tcfg = cfg.model_copy(deep=True)
    tcfg.model.tiny = cfg.scenario.teacher_tiny
    console.rule("[bold]teacher: pre-training + R1-Zero")
    t = time.perf_counter()
    teacher, tok = load_base(tcfg, seed, out / "teacher", console)
    timings["teacher_rl"] = train_rl(tcfg, teacher, tok, train_rows, out / "teacher")
    timings["teacher"] = time.perf_counter() - t
    console.rule("[bold]student: pre-training on the same corpus")
    t = time.perf_counter()
    student, tok = load_base(cfg, seed, out / "student", console)
    timings["student_pretrain"] = time.perf_counter() - t
    n_student = sum(p.numel() for p in student.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    results = {"teacher": behaviour(sample_heldout(teacher, tok, heldout, cfg, seed=seed)),
               "student_base": behaviour(sample_heldout(student, tok, heldout, cfg, seed=seed))}
    console.rule("[bold](a) R1-Zero on the student")
    rl_student = copy.deepcopy(student)
    timings["rl"] = train_rl(cfg, rl_student, tok, train_rows, out / "rl")
    results["rl"] = behaviour(sample_heldout(rl_student, tok, heldout, cfg, seed=seed))
    console.rule("[bold](b) SFT of the student on the teacher's filtered samples")
    t = time.perf_counter()
    pairs = teacher_samples(cfg, teacher, tok, train_rows, seed)
    timings["teacher_sampling"] = time.perf_counter() - t
    if not pairs:
        raise ValueError("the teacher passed no sample: lower reject.min_scores or train it longer")
    tokens = sum(len(tok(p + c)["input_ids"]) for p, c in pairs) / len(pairs)
    prompt_len = sum(len(tok(TEMPLATES.get(cfg.data.template)(r["prompt"], tok))["input_ids"])
                     for r in train_rows[:200]) / min(200, len(train_rows))
    steps = {"equal_steps": cfg.train.steps,
             "equal_compute": equal_compute_steps(read_jsonl(out / "rl" / "metrics.jsonl"), prompt_len, cfg, tokens)}
    for name, n in steps.items():
        t = time.perf_counter()
        seed_everything(seed, cfg.train.deterministic)
        distilled = copy.deepcopy(student)
        s = cfg.sft
        train_sft(distilled, tok, pairs, steps=n, batch_size=s.batch_size, lr=s.lr, warmup_steps=s.warmup_steps,
                  weight_decay=s.weight_decay, grad_clip=s.grad_clip, seed=seed,
                  log_path=out / f"distill_{name}_metrics.jsonl", progress=cfg.log.progress,
                  description=f"distill ({name})")
        timings[f"distill_{name}"] = time.perf_counter() - t
        results[f"distill_{name}"] = behaviour(sample_heldout(distilled, tok, heldout, cfg, seed=seed))
    summary = {
        "scenario": "distillation", "seed": seed,
        "student_params": n_student, "teacher_params": n_teacher,
        **{f"{name}_pass1": b["pass1"] for name, b in results.items()},
        "sft_steps": steps, "rl_steps": cfg.train.steps, "teacher_samples": len(pairs),
        **results,
        "phase_seconds": timings, "wall_seconds": time.perf_counter() - wall0,
        "heldout_problems": len(heldout), "k": cfg.eval.k,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(findings_table(summary, list(results.items())))
    return summary
