"""LoRA vs full fine-tuning on the demo's task: peak RSS, step time, held-out pass@1 each reaches.

One base (the demo's own pre-training, `r1lab.pipeline.demo.pretrain_base`, or `--base DIR`),
then the demo's GRPO run twice from it, each in a fresh process (so each peak RSS is its own):

- full fine-tuning: every weight trained, the demo's lr 1e-4;
- LoRA: `model.lora` (r 8, alpha 16, every linear kind), lr 1e-3 (adapters take a larger lr).

Everything else is the demo's (60 steps, 16 prompts x 8 completions, 96 new tokens,
accuracy + 0.5 format), and each side is evaluated on the demo's 200 held-out problems
(pass@1 over k=4 samples at T=1). The base is evaluated the same way.

    .venv/bin/python benchmarks/bench_lora.py                 # ~6 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_lora.py --dry-run       # tiny settings: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SIDES = {"full": {"lr": 1e-4, "lora": None},
         "lora": {"lr": 1e-3, "lora": {"r": 8, "alpha": 16}}}
DRY = ["pretrain.steps=20", "pretrain.corpus_size=200", "train.steps=2", "train.batch_size=2",
       "rollout.max_new_tokens=16", "eval.num_problems=4", "eval.k=1", "data.train_size=40"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config(args, base: str | None = None, side: str | None = None):
    from r1lab.pipeline.demo import load_demo_config

    cfg = load_demo_config(overrides=DRY if args.dry_run else [])
    cfg.train.seed = args.seed
    cfg.log.progress = False
    if base is not None:  # the GRPO side: the pre-trained base from its folder
        cfg.model.path, cfg.model.tiny = base, None
        cfg.optim.lr = SIDES[side]["lr"]
        if SIDES[side]["lora"]:
            from r1lab.config import LoraConfig

            cfg.model.lora = LoraConfig(**SIDES[side]["lora"])
    return cfg


def child(args) -> dict:
    """One side: the demo's GRPO from the base, then the held-out evaluation."""
    from rich.console import Console

    from r1lab.pipeline.run import run_grpo

    out = Path(args.out) / args.side
    result = run_grpo(config(args, args.base, args.side), out, console=Console(quiet=True))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step_s"] for m in metrics[1:]] or [metrics[0]["step_s"]]  # first step: warm-up
    return {"side": args.side, "peak_rss_mb": max(m["memory/peak_rss_mb"] for m in metrics),
            "step_s": round(statistics.median(steps), 3),
            "heldout_pass1": result["eval"],
            "think_rate_first_last": [metrics[0]["think_rate"], metrics[-1]["think_rate"]],
            "mismatch_kl_max": max(m.get("rollout/mismatch_kl", 0.0) for m in metrics),
            "trainable_params": _trainable(out / "final", SIDES[args.side]["lora"])}


def _trainable(final: Path, lora: dict | None) -> int:
    from safetensors.torch import load_file

    if lora is None:
        return sum(v.numel() for v in load_file(final / "model.safetensors").values())
    return sum(v.numel() for v in load_file(final / "adapter" / "adapter_model.safetensors").values())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--base", help="a pre-trained base folder (default: pre-train the demo's)")
    p.add_argument("--out", help="work folder (default: a temporary one)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(child(args)))
        return
    from rich.console import Console

    from r1lab.data.templates import TEMPLATES
    from r1lab.evaluation import evaluate, paper_protocols
    from r1lab.pipeline.demo import pretrain_base, synthetic_task
    from r1lab.pipeline.run import load_prompt_rows
    from r1lab.train.common import seed_everything

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()}", flush=True)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_lora_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = config(args)
    base = args.base
    if base is None:
        seed_everything(args.seed, cfg.train.deterministic)
        synthetic_task(cfg)
        model, tok = pretrain_base(cfg, args.seed, work, Console(quiet=True))
        base = str(work / "base")
        _, heldout = load_prompt_rows(cfg)
        template = TEMPLATES.get(cfg.data.template)
        proto = [x for x in paper_protocols(cfg.eval) if x.name == "T=1"]
        res = evaluate(model, tok, heldout[: cfg.eval.num_problems],
                       lambda r: template(r["question"], tok), proto,
                       max_new_tokens=cfg.rollout.max_new_tokens, seed=args.seed)
        print(json.dumps({"side": "base", "heldout_pass1": {"T=1": res["T=1"]["pass1"]}}),
              flush=True)
    results = []
    for side in SIDES:
        cmd = [sys.executable, __file__, "--side", side, "--base", base, "--out", str(work),
               "--seed", str(args.seed)] + (["--dry-run"] if args.dry_run else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    full, lora = results
    print(f"LoRA / full: peak RSS {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x, step time "
          f"{lora['step_s'] / full['step_s']:.2f}x, trainable parameters "
          f"{lora['trainable_params']} / {full['trainable_params']}")
    print(json.dumps({"cpu": cpu_model(), "load": os.getloadavg(), "results": results}))


if __name__ == "__main__":
    main()
