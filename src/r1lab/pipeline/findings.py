"""The paper's findings in miniature: `r1lab demo --scenario NAME`.

Each scenario pre-trains a tiny base on a synthetic corpus with one habit in it, runs pure RL,
and measures on held-out problems whether RL amplified the habit, the way DeepSeek-R1 reports it
for a 671B model:

- `reflection`: the corpus's worked solutions slip now and then (a step's total written one
  off, which makes the answer wrong); a small share of them check every step and, on a slip,
  say "wait" and redo it. RL with an accuracy reward only: does the policy start to check its
  work (self-verification, the "aha" moment), and is a checked completion more often right?
- `language`: a share of the corpus's solutions switch mid-way into a second alphabet for the
  same digits (language mixing). R1-Zero (accuracy + format) and R1-Zero plus R1's
  language-consistency reward run from the same base: does the reward stop the mixing, and at
  what cost in accuracy?

At this scale RL can only amplify a behaviour the base already shows now and then: the habit is
in the corpus by construction. What is measured is how far RL amplifies it, and whether it pays.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from r1lab.analysis.behaviour import aha_step, think_length
from r1lab.analysis.report import build_report, read_jsonl
from r1lab.config import RunConfig, save_config
from r1lab.data.templates import TEMPLATES
from r1lab.pipeline.run import load_prompt_rows
from r1lab.registry import Registry
from r1lab.rewards import get_reward
from r1lab.rewards.format import strict_format
from r1lab.rewards.language import mixes
from r1lab.rewards.reflection import reflects
from r1lab.rollout import SamplingParams, build_engine
from r1lab.train.common import seed_everything, thinks
from r1lab.train.grpo import build_trainer

Scenario = Callable[..., dict[str, Any]]  # (cfg, out, seed, console) -> summary
SCENARIOS: Registry[Scenario] = Registry("scenario", "r1lab demo --scenario NAME: a finding of the paper")


def sample_heldout(model, tokenizer, rows: Sequence[dict[str, Any]], cfg: RunConfig, *, seed: int,
                   k: int | None = None, temperature: float = 1.0) -> list[tuple[dict[str, Any], str]]:
    """k completions of every row at `temperature` (T=1, top-p 1: the demo's `rl_pass1`
    protocol), as (row, completion) pairs, k consecutive pairs per row."""
    k = k or cfg.eval.k
    template = TEMPLATES.get(cfg.data.template)
    engine = build_engine(cfg.rollout.engine, model, tokenizer)
    ids = tokenizer([template(r["prompt"], tokenizer) for r in rows])["input_ids"]
    out: list[tuple[dict[str, Any], str]] = []
    per_call = max(1, 256 // k)
    for start in range(0, len(rows), per_call):
        chunk = list(range(start, min(len(rows), start + per_call)))
        params = SamplingParams(n=k, max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                                temperature=temperature, seed=seed * 7919 + start)
        texts = engine.generate([ids[i] for i in chunk], params).texts
        out += [(rows[i], texts[j * k + s]) for j, i in enumerate(chunk) for s in range(k)]
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def behaviour(pairs: Sequence[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """What the findings measure, over (row, completion) pairs.

    pass1 (share correct), think_rate, reflection_rate (the thinking checks or says "wait"),
    caught_slip_rate (it says "wait" and is right), accuracy of reflective and of
    non-reflective completions, mixing_rate (the thinking mixes two scripts), format_error_rate
    (not exactly `<think>…</think><answer>…</answer>`), mean_reasoning_len (characters inside
    `<think>`, over completions that think).

    >>> b = behaviour([({"answer": "12"}, "<think>5+7=13,wait,5+7=12</think><answer>12</answer>"),
    ...                ({"answer": "12"}, "<think>5+7=13</think><answer>13</answer>")])
    >>> b["pass1"], b["reflection_rate"], b["accuracy_reflective"], b["accuracy_plain"]
    (0.5, 0.5, 1.0, 0.0)
    >>> b["mixing_rate"]  # "wait" is a Latin word among digits: the first one mixes scripts
    0.5
    """
    accuracy = get_reward("accuracy")
    correct = [accuracy(c, row).value >= 1.0 for row, c in pairs]
    texts = [c for _, c in pairs]
    refl = [reflects(c) for c in texts]
    lens = [think_length(c) for c in texts if thinks(c)]
    return {
        "n": len(pairs),
        "pass1": _rate(correct),
        "think_rate": _rate([thinks(c) for c in texts]),
        "reflection_rate": _rate(refl),
        "caught_slip_rate": _rate([ok and ",wait," in c for ok, c in zip(correct, texts)]),
        "accuracy_reflective": _rate([ok for ok, r in zip(correct, refl) if r]),
        "accuracy_plain": _rate([ok for ok, r in zip(correct, refl) if not r]),
        "reflective_n": sum(refl),
        "mixing_rate": _rate([mixes(c) for c in texts]),
        "format_error_rate": _rate([strict_format(c).value < 1.0 for c in texts]),
        "mean_reasoning_len": sum(lens) / len(lens) if lens else 0.0,
    }


def _protocols(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The demo's per-protocol table (what `r1lab report` shows) for the T=1 samples."""
    keys = {"pass1": "pass1", "think_rate": "think_rate", "mean_len": "mean_reasoning_len"}
    return {"T=1": {f"{side}_{k}": b[v] for k, v in keys.items() for side, b in (("base", before), ("rl", after))}}


def caught_slip(pairs: Sequence[tuple[dict[str, Any], str]]) -> dict[str, str] | None:
    """The first correct completion that slipped, said "wait" and redid the step."""
    accuracy = get_reward("accuracy")
    for row, c in pairs:
        if ",wait," in c and accuracy(c, row).value >= 1.0:
            return {"question": row["prompt"], "answer": row["answer"], "completion": c}
    return None


def train_rl(cfg: RunConfig, model, tokenizer, train_rows, out: Path) -> float:
    """GRPO on `model` in place, run folder `out` (metrics.jsonl, samples.jsonl, rl/); seconds."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t = time.perf_counter()
    trainer = build_trainer(cfg, model, tokenizer, train_rows, out)
    trainer.fit()
    trainer.save(out / "rl")
    return time.perf_counter() - t


def load_base(cfg: RunConfig, seed: int, out: Path, console: Console):
    """The pre-trained base: `out/base` when an earlier run of this config and seed finished
    pre-training there (`base.json` says so), else pre-trained now. Reseeded afterwards either
    way, so what follows does not depend on which it was."""
    from r1lab.config import ModelConfig
    from r1lab.models import load_policy
    from r1lab.pipeline.demo import pretrain_base

    what = {"seed": seed, **json.loads(cfg.model_dump_json(include={"model", "data", "pretrain"}))}
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "base.json"
    if marker.is_file() and json.loads(marker.read_text()) == what:
        console.print(f"[dim]base pre-trained before with this config: {out / 'base'}[/]")
        model, tokenizer = load_policy(ModelConfig(path=str(out / "base"), threads=cfg.model.threads))
    else:
        model, tokenizer = pretrain_base(cfg, seed, out, console)
        marker.write_text(json.dumps(what, indent=2))
    seed_everything(seed, cfg.train.deterministic)
    return model, tokenizer


def prepare(cfg: RunConfig, out_dir: str | Path, seed: int):
    from r1lab.pipeline.demo import synthetic_task

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(deep=True)
    cfg.train.seed = seed
    save_config(cfg, out / "config.yaml")
    seed_everything(seed, cfg.train.deterministic)
    synthetic_task(cfg)
    train_rows, heldout = load_prompt_rows(cfg)
    return cfg, out, train_rows, heldout[: cfg.eval.num_problems]


@SCENARIOS.register("reflection")
def run_reflection(cfg: RunConfig, out_dir: str | Path, seed: int = 1, console: Console | None = None) -> dict[str, Any]:
    """Self-verification: base vs RL policy on held-out problems, reflection curve, aha step."""
    console = console or Console()
    wall0 = time.perf_counter()
    cfg, out, train_rows, heldout = prepare(cfg, out_dir, seed)
    timings: dict[str, float] = {}
    console.rule("[bold]1/4 pre-training the base (some solutions slip, a few check themselves)")
    t = time.perf_counter()
    model, tokenizer = load_base(cfg, seed, out, console)
    timings["pretrain"] = time.perf_counter() - t
    console.rule("[bold]2/4 the base on held-out problems")
    t = time.perf_counter()
    base_pairs = sample_heldout(model, tokenizer, heldout, cfg, seed=seed)
    base = behaviour(base_pairs)
    timings["eval_base"] = time.perf_counter() - t
    console.rule("[bold]3/4 pure RL with an accuracy reward")
    timings["grpo"] = train_rl(cfg, model, tokenizer, train_rows, out)
    console.rule("[bold]4/4 the RL policy on held-out problems")
    t = time.perf_counter()
    rl_pairs = sample_heldout(model, tokenizer, heldout, cfg, seed=seed)
    rl = behaviour(rl_pairs)
    timings["eval_rl"] = time.perf_counter() - t
    metrics = read_jsonl(out / "metrics.jsonl")
    curve = [m.get("reward/reflection") for m in metrics]
    steps = [m["step"] for m in metrics]
    summary = {
        "scenario": "reflection", "seed": seed,
        "base_pass1": base["pass1"], "rl_pass1": rl["pass1"],
        "base_reflection_rate": base["reflection_rate"], "rl_reflection_rate": rl["reflection_rate"],
        "aha_threshold": cfg.scenario.aha_threshold,
        "aha_step": (aha_step(steps, curve, cfg.scenario.aha_threshold)
                     if curve and None not in curve else None),
        "reflection_curve": curve,
        "base": base, "rl": rl, "protocols": _protocols(base, rl),
        "caught_slip": caught_slip(rl_pairs) or caught_slip(base_pairs),
        "phase_seconds": timings, "wall_seconds": time.perf_counter() - wall0,
        "heldout_problems": len(heldout), "k": cfg.eval.k,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    build_report(out)
    console.print(findings_table(summary, [("base", base), ("RL", rl)]))
    return summary


@SCENARIOS.register("language")
def run_language(cfg: RunConfig, out_dir: str | Path, seed: int = 1, console: Console | None = None) -> dict[str, Any]:
    """Language mixing: R1-Zero vs R1-Zero + language consistency, from the same base."""
    console = console or Console()
    wall0 = time.perf_counter()
    cfg, out, train_rows, heldout = prepare(cfg, out_dir, seed)
    if not any(c.name == "language" for c in cfg.rewards.components):
        raise ValueError("scenario language: rewards.components needs the `language` reward (the run with it)")
    timings: dict[str, float] = {}
    console.rule("[bold]1/4 pre-training the base (some solutions switch alphabet mid-way)")
    t = time.perf_counter()
    model, tokenizer = load_base(cfg, seed, out, console)
    timings["pretrain"] = time.perf_counter() - t
    base = behaviour(sample_heldout(model, tokenizer, heldout, cfg, seed=seed))
    results = {}
    zero_cfg = cfg.model_copy(deep=True)
    zero_cfg.rewards.components = [c for c in cfg.rewards.components if c.name != "language"]
    for i, (name, run_cfg) in enumerate((("r1zero", zero_cfg), ("lc", cfg))):
        console.rule(f"[bold]{i + 2}/4 {'R1-Zero' if name == 'r1zero' else 'R1-Zero + language consistency'}")
        policy = copy.deepcopy(model)
        timings[name] = train_rl(run_cfg, policy, tokenizer, train_rows, out / name)
        results[name] = behaviour(sample_heldout(policy, tokenizer, heldout, cfg, seed=seed))
        build_report(out / name)
    zero, lc = results["r1zero"], results["lc"]
    summary = {
        "scenario": "language", "seed": seed,
        "base_pass1": base["pass1"], "base_mixing_rate": base["mixing_rate"],
        "r1zero_pass1": zero["pass1"], "r1zero_mixing_rate": zero["mixing_rate"],
        "lc_pass1": lc["pass1"], "lc_mixing_rate": lc["mixing_rate"],
        "base": base, "r1zero": zero, "lc": lc,
        "mixing_curves": {name: [m.get("reward/language_mixing") for m in read_jsonl(out / name / "metrics.jsonl")]
                          for name in results},
        "phase_seconds": timings, "wall_seconds": time.perf_counter() - wall0,
        "heldout_problems": len(heldout), "k": cfg.eval.k,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(findings_table(summary, [("base", base), ("R1-Zero", zero), ("R1-Zero + LC", lc)]))
    return summary


@SCENARIOS.register("readability")
def run_readability(cfg: RunConfig, out_dir: str | Path, seed: int = 1, console: Console | None = None) -> dict[str, Any]:
    """Readability: R1-Zero vs R1's four stages (`pipeline r1`: cold start, reasoning RL with the
    language reward, rejection sampling + SFT, all-scenario RL), both from the language
    scenario's base; accuracy, mixing, format errors and reasoning length of each."""
    from r1lab.config import ModelConfig
    from r1lab.models import load_policy
    from r1lab.pipeline.r1 import run_r1

    console = console or Console()
    wall0 = time.perf_counter()
    cfg, out, train_rows, heldout = prepare(cfg, out_dir, seed)
    if not cfg.pipeline.cold_start:
        raise ValueError("scenario readability: pipeline.cold_start is needed (R1's stage 1)")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model, tokenizer = load_base(cfg, seed, out, console)
    timings["pretrain"] = time.perf_counter() - t
    base = behaviour(sample_heldout(model, tokenizer, heldout, cfg, seed=seed))
    zero_cfg = cfg.model_copy(deep=True)
    zero_cfg.rewards.components = [c for c in cfg.rewards.components if c.name != "language"]
    console.rule("[bold]R1-Zero from the base")
    timings["r1zero"] = train_rl(zero_cfg, model, tokenizer, train_rows, out / "r1zero")
    zero = behaviour(sample_heldout(model, tokenizer, heldout, cfg, seed=seed))
    console.rule("[bold]R1's four stages from the same base")
    r1_cfg = cfg.model_copy(deep=True)
    r1_cfg.model = ModelConfig(path=str(out / "base"), threads=cfg.model.threads, device=cfg.model.device)
    t = time.perf_counter()
    stages = run_r1(r1_cfg, out / "r1", console=console)
    timings["r1"] = time.perf_counter() - t
    final, final_tok = load_policy(ModelConfig(path=stages["all_scenario_rl"]["final"], threads=cfg.model.threads))
    r1 = behaviour(sample_heldout(final, final_tok, heldout, cfg, seed=seed))
    keys = ("pass1", "mixing_rate", "format_error_rate", "mean_reasoning_len")
    summary = {
        "scenario": "readability", "seed": seed,
        **{f"{name}_{k}": b[k] for name, b in (("base", base), ("r1zero", zero), ("r1", r1)) for k in keys},
        "base": base, "r1zero": zero, "r1": r1,
        "phase_seconds": timings, "wall_seconds": time.perf_counter() - wall0,
        "heldout_problems": len(heldout), "k": cfg.eval.k,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(findings_table(summary, [("base", base), ("R1-Zero", zero), ("R1 (4 stages)", r1)]))
    return summary


def run_scenario(cfg: RunConfig, out_dir: str | Path, seed: int = 1, console: Console | None = None) -> dict[str, Any]:
    """`r1lab demo --scenario NAME`: the registered scenario `cfg.scenario.name`."""
    return SCENARIOS.get(cfg.scenario.name)(cfg, out_dir, seed=seed, console=console)


def findings_table(s: dict[str, Any], rows: Sequence[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title=f"scenario {s['scenario']} (seed {s['seed']}), {s['heldout_problems']} held-out "
                        f"problems x k={s['k']} at T=1")
    cols = ("pass1", "reflection_rate", "accuracy_reflective", "accuracy_plain", "mixing_rate",
            "format_error_rate", "mean_reasoning_len")
    table.add_column("policy")
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for name, b in rows:
        table.add_row(name, *("-" if b[c] is None else f"{b[c]:.3f}" for c in cols))
    table.caption = f"wall {s['wall_seconds']:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in s['phase_seconds'].items())})"
    return table


from r1lab.pipeline import findings_distill  # noqa: E402, F401  (registers "distillation")
