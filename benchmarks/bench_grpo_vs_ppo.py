"""GRPO vs PPO with a critic on the demo task: peak memory and median step time, side by side.

GRPO's claim (DeepSeekMath, section 4.1; DeepSeek-R1, "GRPO"): dropping PPO's value model saves
the memory and compute of a second network as large as the policy. Both runs start from the
same base, use the demo's batch (16 prompts x 8 completions, 96 new tokens) and seed, and run in
fresh processes so each peak RSS is its own; step times come from a third process that steps
both trainers alternately, so a shared machine's changing load hits both alike.

    python benchmarks/bench_grpo_vs_ppo.py --base runs/compare_objectives/base --steps 20

Reported per algorithm: peak RSS of the process (ru_maxrss), RSS after loading (so the
difference is what training adds), bytes of trainable state (weights + gradients + Adam's two
moments, for the policy and the critic), CUDA peak allocation when on a GPU, and the median
step time with its parts (sampling / update, where PPO's update includes the critic's).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALGOS = {
    "grpo": [],
    "ppo": ["algorithm.advantage=gae", "critic={lr: 1.0e-3, gamma: 1.0, lam: 1.0}"],
}


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(algo: str, base: str, seed: int):
    from r1lab.config import ModelConfig
    from r1lab.data.tasks import generate
    from r1lab.models import load_policy
    from r1lab.pipeline.demo import load_demo_config, synthetic_task
    from r1lab.train.common import seed_everything
    from r1lab.train.grpo import build_trainer

    cfg = load_demo_config(overrides=[*ALGOS[algo], f"train.seed={seed}", "log.progress=false"])
    cfg.model = ModelConfig(path=base, device="auto")
    seed_everything(seed)
    model, tokenizer = load_policy(cfg.model, seed=seed)
    d = cfg.data
    rows = [p.row() for p in generate(synthetic_task(cfg), d.train_size, seed=d.seed, split="train",
                                      min_digits=d.min_digits, max_digits=d.max_digits)]
    return build_trainer(cfg, model, tokenizer, rows, Path("/tmp") / f"bench_{algo}_{seed}")


def child_memory(algo: str, base: str, steps: int, seed: int) -> dict:
    """One algorithm alone in this process: its peak RSS and trainable state."""
    import torch

    trainer = build(algo, base, seed)
    rss_loaded = rss_mb()
    history = [trainer.step() for _ in range(steps)]
    nets = [trainer.model] + ([trainer.critic] if getattr(trainer, "critic", None) is not None else [])  # GRPO: None
    params = sum(p.numel() * p.element_size() for n in nets for p in n.parameters())
    return {
        "device": str(next(trainer.model.parameters()).device),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_loaded,
        "train_state_mb": 4 * params / 2**20,  # weights + grads + 2 Adam moments
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "reward_last5": statistics.mean(m["reward"] for m in history[-5:]),
    }


def child_timing(base: str, steps: int, seed: int) -> dict:
    """Both trainers in one process, stepped alternately: a machine shared with other jobs
    slows both equally, so the medians compare even when the load drifts."""
    trainers = {algo: build(algo, base, seed) for algo in ALGOS}
    history: dict[str, list[dict]] = {algo: [] for algo in ALGOS}
    for _ in range(steps):
        for algo, trainer in trainers.items():
            history[algo].append(trainer.step())
    out = {}
    for algo, h in history.items():
        timed = h[1:] or h  # the first step pays one-off allocation
        out[algo] = {f"median_{k}": statistics.median(m[k] for m in timed)
                     for k in ("step_s", "generate_s", "reward_s", "update_s")}
        out[algo]["mean_completion_len"] = statistics.mean(m["completion_len"] for m in timed)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="pre-trained base (HF dir), e.g. a demo run's base/")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", choices=[*sorted(ALGOS), "timing"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = (child_timing(args.base, args.steps, args.seed) if args.child == "timing"
               else child_memory(args.child, args.base, args.steps, args.seed))
        print(json.dumps(res))
        return

    def run_child(name: str) -> dict:
        cmd = [sys.executable, __file__, "--child", name, "--base", args.base,
               "--steps", str(args.steps), "--seed", str(args.seed)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        print(f"{name}: done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        return json.loads(out.strip().splitlines()[-1])

    results = {algo: run_child(algo) for algo in ALGOS}  # a fresh process each: own ru_maxrss
    for algo, timing in run_child("timing").items():
        results[algo].update(timing)
    rows = [("device", "device", "{}"), ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
            ("RSS after load (MB)", "rss_after_load_mb", "{:.0f}"),
            ("trainable state (MB)", "train_state_mb", "{:.2f}"),
            ("CUDA peak (MB)", "cuda_peak_mb", "{}"),
            ("median step (s)", "median_step_s", "{:.2f}"),
            ("  sampling (s)", "median_generate_s", "{:.2f}"),
            ("  scoring (s)", "median_reward_s", "{:.2f}"),
            ("  update (s)", "median_update_s", "{:.2f}"),
            ("mean completion len", "mean_completion_len", "{:.1f}"),
            ("reward, last 5 steps", "reward_last5", "{:.3f}")]
    print(f"\nGRPO vs PPO-with-critic, demo task, {args.steps} steps, seed {args.seed}\n")
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in results.values()) + " |")


if __name__ == "__main__":
    main()
