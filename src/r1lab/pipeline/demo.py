"""`r1lab demo`: R1-Zero from scratch on a CPU in minutes.

Phases (each timed, each leaving files in the run folder):
1. pre-train a tiny base on a synthetic corpus: half worked <think> solutions, half bare answers,
   so the base can reason but mostly does not bother (a *weak* base: right sometimes, wrong often);
2. evaluate the base on held-out problems (greedy; k samples at T=0.6/top-p 0.95 and at T=1.0);
3. pure GRPO with rule-based rewards (accuracy + format), no SFT on the RL prompts;
4. evaluate the RL policy the same way, write summary.json and print the comparison.
"""

from __future__ import annotations

import json
import random
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from r1lab.analysis.report import build_report
from r1lab.config import RunConfig, load_config, save_config
from r1lab.data.tasks import corpus_completion, stream
from r1lab.data.templates import TEMPLATES
from r1lab.evaluation import evaluate, paper_protocols
from r1lab.models import load_policy
from r1lab.pipeline.run import load_prompt_rows
from r1lab.train.common import seed_everything
from r1lab.train.grpo import build_trainer  # GRPO, or PPO when the config has a critic
from r1lab.train.sft import train_sft


def default_config_path(scenario: str | None = None) -> Path:
    """The embedded config of the demo, or of `--scenario NAME` (`configs/findings_NAME.yaml`)."""
    name = f"findings_{scenario}.yaml" if scenario and scenario != "r1zero" else "demo.yaml"
    path = Path(str(resources.files("r1lab") / "configs" / name))
    if not path.is_file():
        from r1lab.pipeline.findings import SCENARIOS

        raise ValueError(f"unknown scenario {scenario!r}; valid: r1zero, {', '.join(SCENARIOS.names())}")
    return path


def load_demo_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     scenario: str | None = None) -> RunConfig:
    return load_config(path or default_config_path(scenario), overrides)


def synthetic_task(cfg: RunConfig) -> str:
    if not cfg.data.source.startswith("synthetic:"):
        raise ValueError(f"the demo needs a synthetic task (data.source: synthetic:<task>), got {cfg.data.source!r}")
    return cfg.data.source.split(":", 1)[1]


def pretrain_corpus(cfg: RunConfig, seed: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from the training split: worked or bare, by think_fraction,
    with the corpus habits of `cfg.pretrain` (slips, checked solutions, mixed alphabets)."""
    task, d, pre = synthetic_task(cfg), cfg.data, cfg.pretrain
    problems = stream(task, seed=seed, min_digits=d.min_digits, max_digits=d.max_digits)
    rng = random.Random(f"corpus:{seed}")
    template = TEMPLATES.get(d.template)
    pairs = []
    for _ in range(pre.corpus_size):
        p = next(problems)
        pairs.append((template(p.question, None), corpus_completion(
            p, rng, slip_rate=pre.slip_rate, hard_slip_rate=pre.hard_slip_rate,
            reflect_fraction=pre.reflect_fraction,
            mix_fraction=pre.mix_fraction, think_fraction=pre.think_fraction)))
    return pairs


def pretrain_base(cfg: RunConfig, seed: int, out: Path, console: Console):
    """Phase 1: a tiny model pre-trained from scratch on `pretrain_corpus`, saved to `out/base`.
    Returns (model, tokenizer)."""
    model, tokenizer = load_policy(cfg, seed=seed)
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"tiny Llama: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}; "
                  f"corpus: {cfg.pretrain.corpus_size} problems, {cfg.pretrain.think_fraction:.0%} with worked <think> solutions")
    train_sft(model, tokenizer, pretrain_corpus(cfg, seed), steps=cfg.pretrain.steps,
              batch_size=cfg.pretrain.batch_size, lr=cfg.pretrain.lr, seed=seed,
              log_path=out / "pretrain_metrics.jsonl", progress=cfg.log.progress, description="pretrain")
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    return model, tokenizer


def run_demo(cfg: RunConfig, out_dir: str | Path, seed: int = 1, console: Console | None = None) -> dict[str, Any]:
    """The R1-Zero demo, or the finding `cfg.scenario.name` names (`r1lab.pipeline.findings`)."""
    console = console or Console()
    if cfg.scenario.name != "r1zero":
        from r1lab.pipeline.findings import run_scenario

        return run_scenario(cfg, out_dir, seed=seed, console=console)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(deep=True)
    cfg.train.seed = seed
    save_config(cfg, out / "config.yaml")
    seed_everything(seed, cfg.train.deterministic)
    wall0 = time.perf_counter()
    timings: dict[str, float] = {}
    synthetic_task(cfg)  # the pre-training corpus needs a task generator, not a file
    train_rows, heldout = load_prompt_rows(cfg)
    heldout = heldout[: cfg.eval.num_problems]
    template = TEMPLATES.get(cfg.data.template)

    console.rule("[bold]1/4 pre-training a weak base model")
    t = time.perf_counter()
    model, tokenizer = pretrain_base(cfg, seed, out, console)
    save_config(cfg, out / "config.yaml")  # again, with the backend the model loaded with
    n_params = sum(p.numel() for p in model.parameters())
    timings["pretrain"] = time.perf_counter() - t

    def run_eval(name: str) -> dict[str, Any]:
        t = time.perf_counter()
        res = evaluate(model, tokenizer, heldout, lambda r: template(r["question"], tokenizer),
                       paper_protocols(cfg.eval), max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                       seed=seed)
        (out / f"eval_{name}.json").write_text(json.dumps(res, indent=2))
        timings[f"eval_{name}"] = time.perf_counter() - t
        return res

    console.rule("[bold]2/4 evaluating the base on held-out problems")
    base = run_eval("base")

    console.rule("[bold]3/4 R1-Zero: GRPO with rule-based rewards")
    t = time.perf_counter()
    trainer = build_trainer(cfg, model, tokenizer, train_rows, out)
    trainer.fit()
    trainer.save(out / "rl")
    timings["grpo"] = time.perf_counter() - t

    console.rule("[bold]4/4 evaluating the RL policy")
    rl = run_eval("rl")
    summary = {
        "seed": seed,
        "base_pass1": base["T=1"]["pass1"], "rl_pass1": rl["T=1"]["pass1"],
        "base_think_rate": base["T=1"]["think_rate"], "rl_think_rate": rl["T=1"]["think_rate"],
        "base_mean_len": base["T=1"]["mean_len"], "rl_mean_len": rl["T=1"]["mean_len"],
        "protocols": {name: {"base_pass1": base[name]["pass1"], "rl_pass1": rl[name]["pass1"],
                             "base_think_rate": base[name]["think_rate"], "rl_think_rate": rl[name]["think_rate"],
                             "base_mean_len": base[name]["mean_len"], "rl_mean_len": rl[name]["mean_len"]}
                      for name in base},
        "phase_seconds": timings,
        "wall_seconds": time.perf_counter() - wall0,
        "heldout_problems": len(heldout), "k": cfg.eval.k, "params": n_params,
        "checkpoints": {"base": str(out / "base"), "rl": str(out / "rl")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    build_report(out)
    console.print(summary_table(summary))
    return summary


def summary_table(s: dict[str, Any]) -> Table:
    table = Table(title=f"R1-Zero demo (seed {s['seed']}): base vs RL on {s['heldout_problems']} held-out problems")
    for col in ("protocol", "base pass@1", "RL pass@1", "base thinks", "RL thinks", "base len", "RL len"):
        table.add_column(col, justify="right")
    for name, p in s["protocols"].items():
        table.add_row(name, f"{p['base_pass1']:.3f}", f"[bold]{p['rl_pass1']:.3f}", f"{p['base_think_rate']:.0%}",
                      f"{p['rl_think_rate']:.0%}", f"{p['base_mean_len']:.1f}", f"{p['rl_mean_len']:.1f}")
    phases = ", ".join(f"{k} {v:.0f}s" for k, v in s["phase_seconds"].items())
    table.caption = f"pass@1 = mean over k={s['k']} samples (greedy: 1); wall {s['wall_seconds']:.0f}s ({phases})"
    return table
