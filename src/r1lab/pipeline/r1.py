"""`r1lab pipeline r1`: DeepSeek-R1's recipe as one command (paper, section 2.3).

1. **cold_start**: SFT on a small set of long, readable chains of thought
   (`pipeline.cold_start`: a file, or `synthetic:<task>[:N]` for N worked solutions of a
   synthetic task; skipped when unset, which makes stage 2 R1-Zero);
2. **reasoning_rl**: GRPO with rule-based rewards from the cold-start checkpoint;
3. **rejection_sampling** with the stage-2 policy (`r1lab sample`: keep what is correct), then
   **rejection_sft**: SFT on those samples, of the base model (as R1 fine-tunes DeepSeek-V3-Base)
   or of the RL checkpoint (`pipeline.rejection_sft_from`), with non-reasoning rows mixed in
   (`pipeline.general_sft`: writing, QA, role-play (prompt, completion) rows, at
   `pipeline.general_sft_ratio` general rows per kept reasoning row; R1: 200k to 600k);
4. **all_scenario_rl**: GRPO again from the stage-3 checkpoint (in R1 with helpfulness and
   harmlessness rewards besides the rule-based ones: set them with `pipeline.overrides`).

Each stage is the library function of its own command (`run_sft`, `run_grpo`, `run_sample`),
run in `OUT/<n>_<stage>/` on the previous stage's `final/` checkpoint, with the config's
sections plus that stage's `pipeline.overrides`. A finished stage writes `stage.json`; running
the pipeline again skips finished stages and resumes an interrupted RL stage from its newest
checkpoint, so the pipeline resumes at stage granularity (and within RL stages, at step
granularity).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from r1lab.config import PIPELINE_STAGES, RunConfig, apply_overrides, save_config


def stage_config(cfg: RunConfig, stage: str, **sets: Any) -> RunConfig:
    """`cfg` for one stage: `sets` (dotted key -> value) then the stage's own overrides."""
    raw = cfg.model_dump(mode="json")
    raw.pop("pipeline")
    raw = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    return RunConfig.model_validate(apply_overrides(raw, cfg.pipeline.overrides.get(stage, [])))


class Stages:
    """Runs named stages in `out/<n>_<name>/`, each once: a finished stage writes `stage.json`
    and is skipped (its result read back) when the recipe runs again."""

    def __init__(self, cfg: RunConfig, out: Path, console: Console) -> None:
        self.cfg, self.out, self.console = cfg, out, console
        self.results: dict[str, Any] = {}

    def __call__(self, n: int, name: str, run, **sets: Any) -> dict[str, Any]:
        folder = self.out / f"{n}_{name}"
        marker = folder / "stage.json"
        if marker.is_file():
            self.console.print(f"[dim]{n} {name}: done before, skipped ({folder})[/]")
            self.results[name] = json.loads(marker.read_text())
            return self.results[name]
        self.console.rule(f"{n} {name}")
        result = run(stage_config(self.cfg, name, **sets), folder)
        if result.get("stopped"):  # SIGINT / SIGTERM inside an RL stage: checkpointed, stop here
            raise SystemExit(result.get("exit_code", 1))
        marker.write_text(json.dumps(result, indent=2))
        self.results[name] = result
        return result

    def finish(self) -> dict[str, Any]:
        (self.out / "summary.json").write_text(json.dumps(self.results, indent=2))
        return self.results


def cold_start_source(cfg: RunConfig, out: Path) -> str:
    """`pipeline.cold_start` as a file: a path as it is; `synthetic:<task>[:N]` becomes
    `OUT/cold_start.jsonl`, N (default 256) worked solutions in the R1 format from the task's
    training split (written once; the same config writes the same rows)."""
    spec = cfg.pipeline.cold_start
    if not spec.startswith("synthetic:"):
        return spec
    from r1lab.data.tasks import worked_examples

    _, task, *rest = spec.split(":")
    try:
        n = int(rest[0]) if rest else 256
    except ValueError:
        raise ValueError(f"pipeline.cold_start: {spec!r} is not synthetic:<task>[:N] (N an integer)") from None
    path = out / "cold_start.jsonl"
    if not path.is_file():
        d = cfg.data
        rows = worked_examples(task, n, seed=cfg.train.seed + 1_000_003, min_digits=d.min_digits,
                               max_digits=d.max_digits, question_field=d.prompt_field,
                               completion_field=cfg.sft.completion_field)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)
    return str(path)


def mix_general(reasoning: list[dict[str, Any]], general: list[dict[str, Any]], ratio: float,
                seed: int) -> list[dict[str, Any]]:
    """The rejection-sampled rows plus round(ratio * len(reasoning)) general rows (drawn without
    replacement while they last, then again), shuffled together, reproducibly from `seed`.

    >>> rows = mix_general([{"q": "r1"}, {"q": "r2"}, {"q": "r3"}, {"q": "r4"}], [{"q": "g1"}], 0.5, 0)
    >>> sorted(r["q"] for r in rows)
    ['g1', 'g1', 'r1', 'r2', 'r3', 'r4']
    """
    import random

    rng = random.Random(f"general_sft:{seed}")
    want = round(ratio * len(reasoning))
    picked: list[dict[str, Any]] = []
    while general and len(picked) < want:
        picked += rng.sample(general, min(len(general), want - len(picked)))
    rows = reasoning + picked
    rng.shuffle(rows)
    return rows


def sft_mixture(cfg: RunConfig, kept: str, out: Path) -> str:
    """The rejection SFT's data file: `kept` as it is, or, with `pipeline.general_sft`, the kept
    rows mixed with the general rows (`mix_general`) in `OUT/rejection_sft_mix.jsonl`."""
    p = cfg.pipeline
    if not p.general_sft:
        return kept
    from r1lab.data.loading import load_rows

    fields = (cfg.data.prompt_field, cfg.sft.completion_field)
    general = load_rows(p.general_sft, required=fields)  # DataError names file:line
    reasoning = load_rows(kept, required=fields)
    rows = mix_general(reasoning, general, p.general_sft_ratio, cfg.train.seed)
    path = out / "rejection_sft_mix.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return str(path)


def run_r1(cfg: RunConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Run (or finish) the four stages; returns {stage: its result} and writes summary.json.
    With a synthetic task as `data.source`, the SFT stages are evaluated on its held-out split
    too (the RL stages always are), and a table of pass@1 by stage is printed at the end."""
    from r1lab.pipeline.reject import run_sample
    from r1lab.pipeline.run import load_prompt_rows, run_grpo
    from r1lab.pipeline.sft import run_sft

    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    stage = Stages(cfg, out, console)
    heldout = load_prompt_rows(cfg)[1]  # a synthetic split, or data.eval_source / eval_fraction

    def grpo(scfg: RunConfig, folder: Path) -> dict[str, Any]:
        return run_grpo(scfg, folder, console=console, resume="auto")

    def sft(scfg: RunConfig, folder: Path) -> dict[str, Any]:
        # the SFT stages' data is a file; the pipeline's task has held-out problems
        return run_sft(scfg, folder, console=console, heldout=heldout)

    model = {}  # stage 1 skipped: the base model as configured
    if cfg.pipeline.cold_start:
        source = cold_start_source(cfg, out)
        r = stage(1, "cold_start", sft, **{"data.source": source})
        model = {"model.path": r["final"]}
    rl = stage(2, "reasoning_rl", grpo, **model)
    sampled = stage(3, "rejection_sampling", lambda c, f: run_sample(c, f, console=console),
                    **{"model.path": rl["final"]})
    # "base": the configured model, before any stage (R1 fine-tunes DeepSeek-V3-Base here)
    base = {} if cfg.pipeline.rejection_sft_from == "base" else {"model.path": rl["final"]}
    if not sampled["kept_rows"]:
        raise ValueError(f"rejection sampling kept no sample (pass rate {sampled['pass_rate']:.3f}"
                         f" over {sampled['samples']} samples): lower reject.min_scores, raise "
                         "reject.samples_per_prompt, or train the reasoning_rl stage longer")
    stage(3, "rejection_sft", sft, **base, **{"data.source": sft_mixture(cfg, sampled["sft"], out)})
    stage(4, "all_scenario_rl", grpo, **{"model.path": stage.results["rejection_sft"]["final"]})
    results = stage.finish()
    evaluated = {n: r["eval"] for n, r in results.items() if r.get("eval")}
    if evaluated:
        table = Table(title=f"held-out pass@1 by stage ({len(heldout[: cfg.eval.num_problems])} problems)",
                      min_width=60)
        protocols = list(next(iter(evaluated.values())))
        for col in ["stage", *protocols]:
            table.add_column(col, justify="right")
        for n, ev in evaluated.items():
            table.add_row(n, *(f"{ev.get(p, float('nan')):.3f}" for p in protocols))
        console.print(table)
    console.print(f"R1 pipeline finished: {', '.join(n for n in PIPELINE_STAGES if n in results)}; "
                  f"final checkpoint {results['all_scenario_rl']['final']}", highlight=False)
    return results
