"""A GRPO run whose completions grow from ~50 to ~500 tokens: step time and peak memory per step.

    .venv/bin/python benchmarks/length_growth.py                      # 10 caps, 50 -> 500 tokens
    .venv/bin/python benchmarks/length_growth.py --start 50 --end 500 --stages 10 --png benchmarks/length_growth.png

R1's completions lengthen as training goes (the paper's "thinking time" curve). This run
reproduces that schedule on the addition task (training split, accuracy + format rewards) with
the ~4M-parameter Qwen2 of `bench_scaling.py`: one GRPO run (one trainer, one optimiser), whose
`rollout.max_new_tokens` is raised before each step from `--start` to `--end`. The model's
eos is unreachable (see `bench_scaling.build_tokenizer`), so each step generates exactly
rows x cap tokens: what the x axis counts is what was generated.

Peak memory per step: before each step the process's high-water mark is reset (`5` into
/proc/self/clear_refs, Linux >= 4.0) and read after it (VmHWM). For that to measure the step
and not what earlier steps left in malloc's free lists, the run turns off r1lab's allocator
tuning (`R1LAB_MALLOC_TUNING=0`) and fixes glibc's mmap threshold at 64 KiB, so every tensor
buffer is mapped on allocation and unmapped on free. (Training runs keep the tuning: it saves
page faults, and RSS then stays at the largest step's peak.)

Step time is reported as wall time and as the process's CPU time; with `--threads 1` (what
the recorded run used, on a machine shared with other jobs) CPU time is the step's cost
unaffected by time-slicing. Prints one line per step and, last, JSON with the fits: step wall
time, CPU time and peak memory (above the RSS before the first step) against tokens
generated, each as a least-squares line `a + b * tokens`, with R^2.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ["R1LAB_MALLOC_TUNING"] = "0"  # before r1lab is imported: see the docstring
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scaling as bs  # noqa: E402
import torch  # noqa: E402

_M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(nbytes: int = 1 << 16) -> bool:
    """Every allocation above `nbytes` is its own mapping, returned to the OS when freed (a
    fixed threshold also turns off glibc's adaptive one). False off glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes))


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS. False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least squares y = a + b x, and R^2.

    >>> linear_fit([1, 2, 3], [3, 5, 7])
    {'a': 1.0, 'b': 2.0, 'r2': 1.0}
    """
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((u - mx) ** 2 for u in x)
    b = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx
    a = my - b * mx
    ss = sum((v - my) ** 2 for v in y)
    res = sum((v - a - b * u) ** 2 for u, v in zip(x, y))
    return {"a": round(a, 6), "b": round(b, 9), "r2": round(1 - res / ss, 4) if ss else 1.0}


def caps(start: int, end: int, stages: int) -> list[int]:
    """`stages` caps from start to end, evenly spaced.

    >>> caps(50, 500, 10)
    [50, 100, 150, 200, 250, 300, 350, 400, 450, 500]
    """
    if stages == 1:
        return [end]
    return [round(start + (end - start) * i / (stages - 1)) for i in range(stages)]


def trainer(size: str, prompts: int, max_tokens: int):
    from r1lab.config import RunConfig
    from r1lab.data.tasks import generate
    from r1lab.train.grpo import GRPOTrainer

    tokenizer, vocab = bs.build_tokenizer()
    model = bs.build_model(size, tokenizer, vocab, max_len=64 + max_tokens)
    cfg = RunConfig.model_validate({
        "data": {"template": "tiny"},
        "rollout": {"engine": "hf", "group_size": bs.G, "max_new_tokens": 8, "temperature": 1.0},
        "rewards": {"components": [{"name": "accuracy"}, {"name": "format"}]},
        "algorithm": {"beta": bs.BETA, "kl_estimator": "k3"},
        "optim": {"lr": bs.LR},
        "train": {"batch_size": prompts, "micro_batch_size": bs.G * prompts, "seed": bs.SEED,
                  "steps": 1000},
        "log": {"progress": False},
    })
    rows = [p.row() for p in generate("addition", 64, seed=0, split="train")]
    return GRPOTrainer(cfg, model, tokenizer, rows, tempfile.mkdtemp())


def set_cap(tr, cap: int) -> None:
    """Raise the trainer's completion cap for the next step: the config (which the loss's
    length normaliser reads) and the sampling parameters (built from it when the trainer was)."""
    tr.cfg.rollout.max_new_tokens = cap
    tr.sampler.params = replace(tr.sampler.params, max_new_tokens=cap)


def plot(points: list[dict], fits: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p["tokens"] for p in points]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, label in ((a1, ("cpu_s", "step_s"), "step time (s)"),
                            (a2, ("peak_mb",), "peak RSS above start (MB)")):
        for key, mark in zip(keys, "o^"):
            fit = fits[key]
            name = {"cpu_s": "CPU time", "step_s": "wall time", "peak_mb": "peak RSS"}[key]
            line = ax.plot(x, [p[key] for p in points], mark, label=f"{name}, measured")[0]
            xs = [0, max(x)]
            ax.plot(xs, [fit["a"] + fit["b"] * u for u in xs], "-", color=line.get_color(),
                    label=f"fit {fit['a']:.2f} + {fit['b'] * 1000:.3f} per 1k tokens, R²={fit['r2']:.3f}")
        ax.set_xlabel("tokens generated in the step")
        ax.set_ylabel(label)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="4M", choices=[s for s in bs.SIZES if s != "tiny"] + ["tiny"])
    p.add_argument("--start", type=int, default=50)
    p.add_argument("--end", type=int, default=500)
    p.add_argument("--stages", type=int, default=10, help="caps from start to end, one step each")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step (x G=8)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--png", default=str(Path(__file__).with_name("length_growth.png")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fixed = fix_mmap_threshold()
    schedule = caps(args.start, args.end, args.stages)
    tr = trainer(args.size, args.prompts, max(schedule))
    n_params = sum(x.numel() for x in tr.model.parameters())
    print(f"machine: {bs.cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"Qwen2 {n_params / 1e6:.1f}M, {args.prompts} prompts x G={bs.G}, caps {schedule}; "
          f"mmap threshold fixed: {fixed}")
    set_cap(tr, schedule[0])
    tr.step()  # warm-up (kernel builds, oneDNN primitives): not recorded
    start_rss = bs.rss_mb()
    points = []
    for cap in schedule:
        set_cap(tr, cap)
        if not reset_peak():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs): Linux >= 4.0 needed")
        t, c = time.perf_counter(), time.process_time()
        m = tr.step()
        step_s, cpu_s = time.perf_counter() - t, time.process_time() - c
        peak = bs.peak_rss_mb()
        tokens = m["completion_len"] * args.prompts * bs.G
        if round(m["completion_len"]) != cap:
            raise SystemExit(f"cap {cap} but completions of {m['completion_len']} tokens: the cap did not apply")
        points.append({"cap": cap, "tokens": round(tokens), "step_s": round(step_s, 3),
                       "cpu_s": round(cpu_s, 3),
                       "generate_s": round(m["generate_s"], 3),
                       "peak_mb": round(peak - start_rss, 1)})
        print(f"  cap {cap:4d}: {tokens:6.0f} tokens, step {step_s:6.2f} s (generate "
              f"{m['generate_s']:5.2f} s; CPU time {cpu_s:6.2f} s), peak RSS {peak:7.1f} MB ({peak - start_rss:+.1f}), "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    x = [q["tokens"] for q in points]
    fits = {k: linear_fit(x, [q[k] for q in points]) for k in ("step_s", "cpu_s", "peak_mb")}
    plot(points, fits, args.png, f"GRPO, Qwen2 {n_params / 1e6:.1f}M, {args.prompts}x{bs.G} rows, "
         f"cap {schedule[0]} -> {schedule[-1]} tokens; {bs.cpu_model()}")
    print(f"plot: {args.png}; uptime: {bs.uptime()}")
    print(json.dumps({"points": points, "fits": fits, "start_rss_mb": round(start_rss, 1)}))


if __name__ == "__main__":
    main()
