"""`r1lab distill`: a reasoning teacher's filtered samples fine-tune a small student
(paper, section 2.4: Qwen/Llama students trained on 800k R1 samples, SFT only, no RL).

1. **teacher_sampling**: `r1lab sample` with `model.path = pipeline.teacher` over the training
   prompts: `reject.samples_per_prompt` per prompt, kept when they pass `reject.min_scores`;
2. **student_sft**: `r1lab train sft` of `model` (the student) on the kept samples; for a
   synthetic task the student is then evaluated on the held-out split, as the teacher is.

Stages run in `OUT/<n>_<stage>/` and are skipped when done (see `r1lab.pipeline.r1.Stages`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from r1lab.config import ConfigError, RunConfig, save_config
from r1lab.pipeline.r1 import Stages


def run_distill(cfg: RunConfig, out_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    from r1lab.pipeline.evaluate import run_eval
    from r1lab.pipeline.reject import run_sample
    from r1lab.pipeline.sft import run_sft

    teacher = cfg.pipeline.teacher
    if not teacher:
        raise ConfigError("pipeline.teacher: `distill` needs the teacher checkpoint's path")
    if not (Path(teacher) / "config.json").is_file():
        raise ConfigError(f"pipeline.teacher: {teacher} is not a Hugging Face model directory")
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    stage = Stages(cfg, out, console)
    sampled = stage(1, "teacher_sampling", lambda c, f: run_sample(c, f, console=console),
                    **{"model.path": teacher})
    if not sampled["kept_rows"]:
        raise ValueError(f"the teacher passed no sample (pass rate {sampled['pass_rate']:.3f}): "
                         "lower reject.min_scores or raise reject.samples_per_prompt")

    def student(c: RunConfig, folder: Path) -> dict[str, Any]:
        result = run_sft(c, folder, console=console)
        d = cfg.data  # held-out problems exist (a synthetic split, eval_source/eval_fraction): evaluate
        if d.source.startswith("synthetic:") or d.eval_source or d.eval_fraction > 0:
            ev = c.model_copy(update={"model": c.model.model_copy(update={"path": result["final"]}),
                                      "data": cfg.data})
            result["eval"] = {k: v["pass1"] for k, v in run_eval(ev, folder / "eval", console=console).items()}
        return result

    result = stage(2, "student_sft", student, **{"data.source": sampled["sft"]})
    console.print(f"distilled {sampled['kept_rows']} teacher samples into {result['final']}"
                  + (f"; held-out pass@1 {json.dumps(result['eval'])}" if "eval" in result else ""),
                  highlight=False)
    return stage.finish()
