"""How GRPO step cost grows with model size and completion length: r1lab vs TRL.

    .venv/bin/python benchmarks/bench_scaling.py             # the grid (points TRL would take too long on are dropped)
    .venv/bin/python benchmarks/bench_scaling.py --quick     # 4 points, < 10 min on 2 idle cores
    .venv/bin/python benchmarks/bench_scaling.py --dry-run   # a tiny model, seconds (the test runs it)
    .venv/bin/python benchmarks/bench_scaling.py --points 25M:1024 --profile   # one point + profile

Built like `bench_vs_trl.py`: both trainers get the same objects (one Qwen2 model built from a
config, weights copied; the char tokenizer; the same prompts, reward and GRPO settings: G=8,
T=1.0, beta 0.04 with k3, DAPO token-level loss, eps 0.2, AdamW lr 1e-4, grad clip 1, one
optimiser step per batch, no micro-batching, no gradient checkpointing: TRL 1.x turns it on by
default, so it is turned off here), and their steps are interleaved in one process
(TRL step, r1lab step, ...); the step time of each is the median after warm-up (wall time,
the result; the process's CPU time is printed too: with `--threads 1` on a machine shared
with other jobs, it is the cost without the time-slicing).

The grid: Qwen2 of ~4M, ~25M and ~100M parameters x 64, 256 and 1024 new tokens. EOS is off,
so every row runs to the cap: the tokenizer's eos is an extra token the model's vocabulary
does not have (it can never be sampled), on both sides. A point is dropped when TRL's step
there, estimated from the slowest TRL GFLOP/s measured so far in the run, would exceed
`--max-trl-step` seconds; the dropped points are printed (`--quick` drops none).

Peak memory: each side runs `--mem-steps` steps alone in a fresh subprocess (same model,
settings and allocator set-up), which reports its peak RSS (`VmHWM`) and its RSS once the
model is built (before the trainer exists). One process cannot measure two trainers' peaks
apart: what one frees, the other reuses.

FLOP/s count the work of the computation both sides do, per completion row: 2P per generated
token plus 4 L d c for its attention at context c; per trained token 2P (reference forward) +
2P (forward) + 4P (backward), plus causal attention (2 L d S^2 per row forward, twice that
backward). P: weights in matmuls (the tied LM head included), L layers, d = heads x head dim.
r1lab does less than this count (each group's prompt once, no padding), so its GFLOP/s is
"effective"; against the machine's float32 matmul peak, measured here (torch and oneDNN).

Requires TRL (`pip install 'r1lab[bench]'`). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

SIZES = {  # Qwen2 from a config; parameter counts printed at run time
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4),
    "4M": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=4),
    "25M": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                num_key_value_heads=8),
    "100M": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=10,
                 num_attention_heads=12, num_key_value_heads=12),
}
GRID = [(s, n) for s in ("4M", "25M", "100M") for n in (64, 256, 1024)]
QUICK = [("4M", 64), ("4M", 256), ("25M", 64), ("4M", 1024)]
DRY = [("tiny", 8)]
QUESTIONS = ["12+30", "345+67", "8+91", "250+250", "77+123", "5+6", "404+17", "99+1"]
G, LR, BETA, SEED = 8, 1e-4, 0.04, 0
PRECISION = "fp32"  # --precision: fp32 (both sides), or bf16 mixed precision (fp32 master weights) on both


def digit_share(text: str) -> float:
    """The reward: the share of digits in the completion (cheap, deterministic, varied).

    >>> digit_share("a1b2")
    0.5
    """
    return len(re.findall(r"\d", text)) / max(1, len(text))


def cpu_model() -> str:
    """`model name` and `cpu family` from /proc/cpuinfo (what decides which kernels are fast)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """This process's resident set (VmRSS) in MiB."""
    return _status_mb("VmRSS")


def uptime() -> str:
    """/proc/loadavg: the 1, 5 and 15 minute loads (what to read a timing against)."""
    return Path("/proc/loadavg").read_text().strip()


# ---------------------------------------------------------------------------- shared objects
def build_tokenizer():
    """The char tokenizer with an extra eos token that no model built here can sample."""
    from r1lab.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    vocab = len(tok)
    tok.add_special_tokens({"eos_token": "<|never|>"})
    assert tok.eos_token_id == vocab, "the unreachable eos must be the last id"
    return tok, vocab


def build_model(size: str, tokenizer, vocab: int, max_len: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, bos_token_id=None,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      use_sliding_window=False, max_position_embeddings=max_len, **SIZES[size])
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg).float().eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def matmul_params(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def step_flops(size: str, n_params: int, prompt_lens: list[int], new_tokens: int, beta: float) -> float:
    """Model FLOPs of one step, per completion row (see the module docstring).

    >>> round(step_flops("tiny", 1000, [2], 3, 0.04) / 1e3, 3)  # 8 rows of 2 + 3 tokens
    609.664
    """
    L, d = SIZES[size]["num_hidden_layers"], SIZES[size]["hidden_size"]
    total = 0.0
    for p in prompt_lens:
        gen = sum(2 * n_params + 4 * L * d * c for c in range(p, p + new_tokens))
        S = p + new_tokens
        train = (2 * (beta > 0) + 6) * n_params * S + (2 * (beta > 0) + 2 + 4) * L * d * S * S
        total += G * (gen + train)
    return total


def matmul_peak(hidden: int, inter: int, seconds: float = 2.0) -> dict[str, float]:
    """GFLOP/s of a float32 [4096, hidden] x [hidden, inter] matmul by torch and by oneDNN
    (weight packed once, what r1lab's linears use)."""
    from r1lab import onednn

    a, b = torch.randn(4096, hidden), torch.randn(hidden, inter)
    runs = {"torch": lambda: a @ b}
    if onednn.onednn_usable():
        packed = onednn.Linear(b.t().contiguous(), None, rows=a.shape[0])
        runs["oneDNN"] = lambda: packed(a)
    out = {}
    for name, fn in runs.items():
        for _ in range(3):
            fn()
        best, t_end = 0.0, time.perf_counter() + seconds / len(runs)
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            for _ in range(3):
                fn()
            best = max(best, 3 * 2 * a.shape[0] * hidden * inter / (time.perf_counter() - t))
        out[name] = best / 1e9
    return out


# ---------------------------------------------------------------------------- the two trainers
def r1lab_trainer(model, tokenizer, prompts: int, new_tokens: int, run_dir: str):
    from r1lab.config import RunConfig
    from r1lab.rewards import REWARDS, Score
    from r1lab.train.grpo import GRPOTrainer

    if "bench_digit_share" not in REWARDS:
        REWARDS.register("bench_digit_share", lambda completion, row, **kw: Score(digit_share(completion)))
    cfg = RunConfig.model_validate({
        "data": {"template": "tiny"},
        "model": {"dtype": "bfloat16" if PRECISION == "bf16" else "float32"},
        "rollout": {"engine": "hf", "group_size": G, "max_new_tokens": new_tokens, "temperature": 1.0},
        "rewards": {"components": [{"name": "bench_digit_share"}]},
        "algorithm": {"advantage": "grpo", "loss": "clip", "aggregation": "token_mean",
                      "kl_estimator": "k3", "beta": BETA, "eps_low": 0.2, "eps_high": 0.2,
                      "adv_eps": 1e-4, "adv_ddof": 1, "scale_rewards": "group"},
        "optim": {"lr": LR, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "grad_clip": 1.0},
        "train": {"batch_size": prompts, "micro_batch_size": G * prompts, "seed": SEED,
                  "steps": 1000},
        "log": {"progress": False},
    })
    rows = [{"question": q, "answer": ""} for q in QUESTIONS[:prompts]]
    return GRPOTrainer(cfg, model, tokenizer, rows, run_dir)


def trl_trainer(model, tokenizer, prompts: int, new_tokens: int, steps: int, callbacks, model_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions, **kwargs):
        return [digit_share(c) for c in completions]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=G * prompts,
        gradient_accumulation_steps=1, num_generations=G, max_completion_length=new_tokens,
        temperature=1.0, top_p=1.0, learning_rate=LR, lr_scheduler_type="constant",
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, beta=BETA,
        loss_type="dapo", epsilon=0.2, scale_rewards="group", max_steps=steps, seed=SEED,
        use_cpu=True, gradient_checkpointing=False,  # TRL's default is True; r1lab's False
        bf16=PRECISION == "bf16", report_to=[], save_strategy="no", logging_steps=10_000,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    model.config._name_or_path = model_dir  # TRL builds its reference model from this path
    texts = [f"Q:{q}\nA:" for q in QUESTIONS[:prompts]]  # r1lab's "tiny" template, pre-applied
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": texts}), callbacks=callbacks)
    return trainer


def timed_generate(model, spent: list):
    """Wrap `model.generate` (TRL calls it on the unwrapped model) to time each call."""
    inner = model.generate

    def generate(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        spent.append(time.perf_counter() - t)
        return out
    model.generate = generate


# ---------------------------------------------------------------------------- one point
def setup(size: str, new_tokens: int):
    from r1lab.runtime import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # before either trainer: both run with the same allocator
    tokenizer, vocab = build_tokenizer()
    base = build_model(size, tokenizer, vocab, max_len=64 + new_tokens)
    model_dir = tempfile.mkdtemp()
    base.save_pretrained(model_dir)
    return tokenizer, base, model_dir, tuned


def interleaved(size: str, new_tokens: int, prompts: int, steps: int) -> dict:
    """TRL and r1lab alternately, one step each, in this process: step times of each."""
    from transformers import TrainerCallback

    tokenizer, base, model_dir, _ = setup(size, new_tokens)
    ours = r1lab_trainer(copy.deepcopy(base), tokenizer, prompts, new_tokens, tempfile.mkdtemp())
    times: dict[str, list] = {"trl": [], "r1lab": [], "r1lab_gen": [], "trl_gen": [], "tokens": [],
                              "trl_cpu": [], "r1lab_cpu": []}

    class Alternate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times["trl"].append(time.perf_counter() - self.t0)
            times["trl_cpu"].append(time.process_time() - self.c0)
            t, c = time.perf_counter(), time.process_time()
            m = ours.step()
            times["r1lab"].append(time.perf_counter() - t)
            times["r1lab_cpu"].append(time.process_time() - c)
            times["r1lab_gen"].append(m["generate_s"])
            times["tokens"].append(m["completion_len"] * G * prompts)
            print(f"    step {len(times['trl'])}  TRL {times['trl'][-1]:7.2f} s   r1lab "
                  f"{times['r1lab'][-1]:7.2f} s   (completion {m['completion_len']:.0f} tokens, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)

    trainer = trl_trainer(copy.deepcopy(base), tokenizer, prompts, new_tokens, steps, [Alternate()], model_dir)
    timed_generate(trainer.model, times["trl_gen"])
    with contextlib.redirect_stdout(sys.stderr):  # TRL's own end-of-training log line
        trainer.train()
    return times


def memory_worker(side: str, size: str, new_tokens: int, prompts: int, steps: int) -> dict:
    """Run `steps` steps of one side alone; peak RSS of this (fresh) process."""
    tokenizer, base, model_dir, _ = setup(size, new_tokens)
    built = rss_mb()
    if side == "r1lab":
        tr = r1lab_trainer(base, tokenizer, prompts, new_tokens, tempfile.mkdtemp())
        for _ in range(steps):
            tr.step()
    else:
        tr = trl_trainer(base, tokenizer, prompts, new_tokens, steps, [], model_dir)
        with contextlib.redirect_stdout(sys.stderr):
            tr.train()
    return {"peak_mb": peak_rss_mb(), "built_mb": built}


def memory(size: str, new_tokens: int, prompts: int, steps: int, threads: int,
           together: bool = False) -> dict[str, dict]:
    """Peak RSS of each side, each from its own fresh process (`memory_worker`); one after the
    other, or both at once when `together` (peaks do not depend on timing; the dry run)."""
    procs, done = {}, {}
    for side in ("r1lab", "trl"):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", side, "--points",
               f"{size}:{new_tokens}", "--prompts", str(prompts), "--mem-steps", str(steps),
               "--threads", str(threads), "--precision", PRECISION]
        procs[side] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not together:
            done[side] = procs[side].communicate()
    out = {}
    for side, proc in procs.items():
        stdout, stderr = done[side] if side in done else proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory run {side} {size}:{new_tokens} failed:\n{stderr[-3000:]}")
        out[side] = json.loads(stdout.strip().splitlines()[-1])
    return out


def profile_point(size: str, new_tokens: int, prompts: int, steps: int) -> None:
    """Where an r1lab step's time goes at this point: torch.profiler by operator, after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    tokenizer, base, _, _ = setup(size, new_tokens)
    tr = r1lab_trainer(base, tokenizer, prompts, new_tokens, tempfile.mkdtemp())
    tr.step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ms = [tr.step() for _ in range(steps)]
    total = time.perf_counter() - t
    gen = sum(m["generate_s"] for m in ms)
    print(f"profile, r1lab {size}:{new_tokens}, {steps} steps, {total / steps:.2f} s per step "
          f"(generate {gen / total:.0%}, update + reference {1 - gen / total:.0%}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))


# ---------------------------------------------------------------------------- main
def parse_points(text: str) -> list[tuple[str, int]]:
    """'4M:64,25M:256' -> [('4M', 64), ('25M', 256)]; names the bad item.

    >>> parse_points("4M:64,25M:256")
    [('4M', 64), ('25M', 256)]
    """
    out = []
    for item in text.split(","):
        size, _, n = item.partition(":")
        if size not in SIZES or not n.isdigit():
            raise SystemExit(f"--points: {item!r} is not SIZE:NEW_TOKENS with SIZE one of {list(SIZES)}")
        out.append((size, int(n)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", help="SIZE:NEW_TOKENS,... (default: the grid)")
    p.add_argument("--quick", action="store_true", help=f"the points {QUICK}, 3 steps each")
    p.add_argument("--dry-run", action="store_true", help="a tiny model, 8 tokens: seconds")
    p.add_argument("--steps", type=int, default=4, help="interleaved steps per trainer")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    p.add_argument("--mem-steps", type=int, default=2, help="steps of each side's memory run")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step (x G=8 completions)")
    p.add_argument("--max-trl-step", type=float, default=150.0,
                   help="drop a point whose estimated TRL step exceeds this many seconds")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--profile", action="store_true", help="profile r1lab at the last point")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 on both sides (default), or bf16 mixed precision on both: fp32 master "
                   "weights, forward/backward under autocast (r1lab `model.dtype: bfloat16`, TRL "
                   "`bf16=True`); each side samples as it does in that mode")
    p.add_argument("--memory-worker", choices=["r1lab", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    global PRECISION
    PRECISION = args.precision
    torch.set_num_threads(args.threads)
    points = parse_points(args.points) if args.points else GRID
    if args.quick:
        points, args.steps = (parse_points(args.points) if args.points else QUICK), 3
        args.max_trl_step = math.inf  # the quick points are fixed: none is dropped
    if args.dry_run:
        points, args.steps, args.mem_steps = DRY, 2, 1
    if args.memory_worker:
        (size, n), = points
        print(json.dumps(memory_worker(args.memory_worker, size, n, args.prompts, args.mem_steps)))
        return
    import transformers
    import trl

    tokenizer, vocab = build_tokenizer()
    prompt_lens = [len(x) for x in tokenizer([f"Q:{q}\nA:" for q in QUESTIONS[:args.prompts]])["input_ids"]]
    big = max((SIZES[s] for s, _ in points), key=lambda c: c["hidden_size"])
    peaks = matmul_peak(big["hidden_size"], big["intermediate_size"], 0.2 if args.dry_run else 2.0)
    peak = max(peaks.values())
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"load {os.getloadavg()[0]:.2f} | torch {torch.__version__}, transformers "
          f"{transformers.__version__}, trl {trl.__version__}")
    print(f"float32 matmul peak ({big['hidden_size']}x{big['intermediate_size']}): {peak:.0f} GFLOP/s ("
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ")")
    print(f"setting (both): {PRECISION}, {args.prompts} prompts x G={G}, EOS off (every row to the cap), T=1.0, "
          f"beta {BETA} (k3), DAPO loss, AdamW lr {LR}, grad clip 1, one optimiser step per "
          f"{args.prompts * G} completions; {args.steps} interleaved steps each, first "
          f"{args.warmup} = warm-up; memory: {args.mem_steps} steps per side in a fresh process\n")
    results, dropped, trl_rate = [], [], math.inf
    for size, n in points:
        base = build_model(size, tokenizer, vocab, 64 + n)
        n_params, n_mm = sum(x.numel() for x in base.parameters()), matmul_params(base)
        flops = step_flops(size, n_mm, prompt_lens, n, BETA)
        est = flops / trl_rate
        if est > args.max_trl_step:
            dropped.append({"params": n_params, "new_tokens": n, "trl_step_estimate_s": round(est)})
            print(f"[{size} {n_params / 1e6:.1f}M x {n} tokens] dropped: TRL step estimated at "
                  f"{est:.0f} s (> {args.max_trl_step:.0f} s)\n", flush=True)
            continue
        print(f"[{size} {n_params / 1e6:.1f}M x {n} tokens] {flops / 1e12:.2f} TFLOP per step "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
        times = interleaved(size, n, args.prompts, args.steps)
        w = args.warmup if len(times["trl"]) > args.warmup else 0
        trl_s, ours_s = (statistics.median(times[k][w:]) for k in ("trl", "r1lab"))
        trl_c, ours_c = (statistics.median(times[k][w:]) for k in ("trl_cpu", "r1lab_cpu"))
        tokens = statistics.median(times["tokens"][w:])
        trl_tps = tokens / statistics.median(times["trl_gen"][w:]) if times["trl_gen"] else float("nan")
        ours_tps = tokens / statistics.median(times["r1lab_gen"][w:])
        trl_rate = min(trl_rate, flops / trl_s)
        mem = memory(size, n, args.prompts, args.mem_steps, args.threads, together=args.dry_run)
        row = {"size": size, "params": n_params, "new_tokens": n, "step_speedup": round(trl_s / ours_s, 3),
               "r1lab_peak_mb": round(mem["r1lab"]["peak_mb"]), "trl_peak_mb": round(mem["trl"]["peak_mb"]),
               "trl_step_s": round(trl_s, 3), "r1lab_step_s": round(ours_s, 3),
               "cpu_speedup": round(trl_c / ours_c, 3),
               "trl_gen_tok_s": round(trl_tps), "r1lab_gen_tok_s": round(ours_tps),
               "trl_gflops": round(flops / trl_s / 1e9, 1), "r1lab_gflops": round(flops / ours_s / 1e9, 1),
               "model_mb": round(mem["r1lab"]["built_mb"])}
        results.append(row)
        print(f"  step: TRL {trl_s:.2f} s, r1lab {ours_s:.2f} s -> {trl_s / ours_s:.2f}x (CPU time "
              f"{trl_c:.2f} / {ours_c:.2f} s -> {trl_c / ours_c:.2f}x) | rollout "
              f"tok/s TRL {trl_tps:.0f}, r1lab {ours_tps:.0f} | peak RSS TRL {row['trl_peak_mb']} MB, "
              f"r1lab {row['r1lab_peak_mb']} MB (model built: {row['model_mb']} MB) | GFLOP/s TRL "
              f"{row['trl_gflops']}, r1lab {row['r1lab_gflops']} ({row['r1lab_gflops'] / peak:.0%} "
              f"of peak) | load {os.getloadavg()[0]:.2f}\n", flush=True)
    print("| params | new tokens | TRL step s | r1lab step s | speedup | CPU-time speedup "
          "| rollout tok/s TRL / r1lab | peak RSS MB TRL / r1lab | GFLOP/s TRL / r1lab (% of peak) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['params'] / 1e6:.1f}M | {r['new_tokens']} | {r['trl_step_s']} | {r['r1lab_step_s']} "
              f"| {r['step_speedup']:.2f}x | {r['cpu_speedup']:.2f}x | {r['trl_gen_tok_s']} / {r['r1lab_gen_tok_s']} "
              f"| {r['trl_peak_mb']} / {r['r1lab_peak_mb']} | {r['trl_gflops']} / {r['r1lab_gflops']} "
              f"({r['r1lab_gflops'] / peak:.0%}) |")
    for d in dropped:
        print(f"dropped: {d['params'] / 1e6:.1f}M x {d['new_tokens']} (TRL step ~{d['trl_step_estimate_s']} s)")
    if args.profile and results:
        print()
        slow = max(results, key=lambda r: r["r1lab_step_s"])  # the slowest point
        profile_point(slow["size"], slow["new_tokens"], args.prompts, 1)
    keys = ("params", "new_tokens", "step_speedup", "r1lab_peak_mb", "trl_peak_mb")
    out = {"precision": PRECISION, "points": [{k: r[k] for k in keys} for r in results],
           "min_step_speedup": min((r["step_speedup"] for r in results), default=None)}
    print(f"uptime (load 1/5/15 min): {uptime()}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
