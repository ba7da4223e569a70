"""Held-out pass@1 of GRPO objectives on the demo task, from one base, with one seed.

Pre-trains the demo's weak base once (or loads `--base DIR`, e.g. a demo run's `DIR/base`),
then for each setting runs the demo's GRPO phase from that same base with the same seed and
evaluates held-out pass@1 at T=1 (k=4 samples per problem). The settings change only the
objective; batch, learning rate and steps are the demo's, so the rows differ in one thing.

    python benchmarks/compare_objectives.py --out runs/compare            # pre-trains (~1.5 min)
    python benchmarks/compare_objectives.py --base runs/demo/base --settings grpo,dapo,ppo

Settings (the presets in configs/ carry the peers' full hyper-parameters; here only their
objective is applied, at the demo's scale):
  grpo     demo default: group-normalised advantage, symmetric clip 0.2, token_mean
  dr_grpo  configs/dr_grpo.yaml: no std division, seq_mean_token_sum_norm
  rloo     leave-one-out baseline
  dapo     configs/dapo.yaml: clip-higher 0.28, dynamic sampling (<= 3 refills), overlong reward
  ppo      configs/ppo.yaml: a critic and GAE (gamma 1, lambda 1), whitened advantages
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from r1lab.config import ModelConfig
from r1lab.data.tasks import generate
from r1lab.data.templates import TEMPLATES
from r1lab.evaluation import Protocol, evaluate
from r1lab.models import load_policy
from r1lab.pipeline.demo import load_demo_config, pretrain_corpus, synthetic_task
from r1lab.train.common import seed_everything
from r1lab.train.grpo import build_trainer
from r1lab.train.sft import train_sft

MAXLEN = 96  # the demo's rollout.max_new_tokens
SETTINGS: dict[str, list[str]] = {
    "grpo": [],
    "dr_grpo": ["algorithm.advantage=dr_grpo", "algorithm.aggregation=seq_mean_token_sum_norm"],
    "rloo": ["algorithm.advantage=rloo"],
    "dapo": ["algorithm.eps_high=0.28", "algorithm.dynamic_sampling=true",
             "algorithm.max_refill_rounds=3",
             "rewards.components=[{name: accuracy, weight: 1.0}, {name: format, weight: 0.5},"
             f" {{name: overlong, weight: 1.0, kwargs: {{max_length: {MAXLEN}, cache_length: 24}}}}]"],
    "ppo": ["algorithm.advantage=gae", "critic={lr: 1.0e-3, gamma: 1.0, lam: 1.0}"],
}


def pretrain_base(out: Path, seed: int) -> Path:
    cfg = load_demo_config(overrides=["log.progress=false"])
    seed_everything(seed)
    model, tokenizer = load_policy(cfg.model, seed=seed)
    train_sft(model, tokenizer, pretrain_corpus(cfg, seed), steps=cfg.pretrain.steps,
              batch_size=cfg.pretrain.batch_size, lr=cfg.pretrain.lr, seed=seed,
              log_path=out / "pretrain_metrics.jsonl", progress=False, description="pretrain")
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    return out / "base"


def heldout_pass1(model, tokenizer, cfg, seed: int, k: int = 4) -> dict[str, float]:
    d = cfg.data
    rows = [p.row() for p in generate(synthetic_task(cfg), min(d.heldout_size, cfg.eval.num_problems),
                                      seed=d.seed, split="heldout", min_digits=d.min_digits,
                                      max_digits=d.max_digits)]
    template = TEMPLATES.get(d.template)
    res = evaluate(model, tokenizer, rows, lambda r: template(r["question"], tokenizer),
                   [Protocol("T=1", 1.0, 1.0, k)], max_new_tokens=cfg.rollout.max_new_tokens,
                   seed=seed)["T=1"]
    return {"pass1": res["pass1"], "think_rate": res["think_rate"], "mean_len": res["mean_len"]}


def run_setting(name: str, base: Path, out: Path, seed: int, steps: int) -> dict[str, float]:
    cfg = load_demo_config(overrides=[*SETTINGS[name], f"train.steps={steps}", f"train.seed={seed}",
                                      "log.progress=false"])
    cfg.model = ModelConfig(path=str(base), threads=cfg.model.threads)
    seed_everything(seed)
    model, tokenizer = load_policy(cfg.model, seed=seed)
    d = cfg.data
    rows = [p.row() for p in generate(synthetic_task(cfg), d.train_size, seed=d.seed, split="train",
                                      min_digits=d.min_digits, max_digits=d.max_digits)]
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, model, tokenizer, rows, out / name)
    history = trainer.fit(progress=False)
    train_s = time.perf_counter() - t0
    last = history[-10:]
    return {**heldout_pass1(model, tokenizer, cfg, seed),
            "train_reward_last10": statistics.mean(m["reward"] for m in last),
            "zero_signal_mean": statistics.mean(m["zero_signal_groups"] for m in history),
            "entropy_last10": statistics.mean(m["entropy"] for m in last),
            "median_step_s": statistics.median(m["step_s"] for m in history),
            "train_s": train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="a pre-trained base (HF dir); default: pre-train one")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_objectives"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--settings", default="grpo,dr_grpo,rloo,dapo")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = args.base or pretrain_base(args.out, args.seed)
    cfg = load_demo_config()
    base_model, base_tok = load_policy(ModelConfig(path=str(base)))
    results = {"base": heldout_pass1(base_model, base_tok, cfg, args.seed)}
    print(f"base: {results['base']}", flush=True)
    for name in args.settings.split(","):
        results[name] = run_setting(name, base, args.out, args.seed, args.steps)
        print(f"{name}: {results[name]}", flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nheld-out pass@1 (T=1, k=4, {cfg.eval.num_problems} problems), seed {args.seed}, "
          f"{args.steps} GRPO steps from one base; wall {time.perf_counter() - t0:.0f}s\n")
    print("| setting | pass@1 | thinks | mean len | train reward (last 10) | zero-signal groups | entropy (last 10) | median step s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        extra = ("| - | - | - | - |" if name == "base" else
                 f"| {r['train_reward_last10']:.3f} | {r['zero_signal_mean']:.0%} | "
                 f"{r['entropy_last10']:.3f} | {r['median_step_s']:.2f} |")
        print(f"| {name} | {r['pass1']:.3f} | {r['think_rate']:.0%} | {r['mean_len']:.1f} {extra}")


if __name__ == "__main__":
    main()
