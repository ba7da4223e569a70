"""GRPO step time, r1lab vs TRL, side by side in one process; rollout speed vs `model.generate`.

    .venv/bin/python benchmarks/bench_vs_trl.py            # full run (~5-8 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_vs_trl.py --quick    # fewer steps (< 2 min)
    .venv/bin/python benchmarks/bench_vs_trl.py --profile  # + where one r1lab step spends its time

Both trainers get the same objects: one Qwen2 model built from a config (weights copied), the
char tokenizer, the same 8 prompts, the same reward function, and the same GRPO settings (G=8,
64 new tokens, T=1.0, KL beta 0.04 with the k3 estimator, DAPO token-level loss normalised by
the batch's token count, eps 0.2, AdamW lr 1e-4 constant, betas (0.9, 0.999), grad clip 1, one
optimiser step per batch of 64 completions, micro-batch 64). The steps are *interleaved* (TRL step, r1lab step,
TRL step, ...), so a change in machine load hits both alike; the ratio of medians after warm-up
is the result. A second comparison at beta 0 (TRL's default) is reported separately.

One process, one allocator: the glibc setting r1lab makes on CPU (`r1lab.runtime`, keep freed
memory instead of page-faulting it back) is made before either trainer runs, so TRL's steps get
it too; `R1LAB_MALLOC_TUNING=0` runs both without it.

Requires TRL (`pip install 'r1lab[bench]'`). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

MODEL = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512)
QUESTIONS = ["12+30", "345+67", "8+91", "250+250", "77+123", "5+6", "404+17", "99+1"]
G, NEW_TOKENS, LR, BETA, SEED = 8, 64, 1e-4, 0.04, 0


def digit_share(text: str) -> float:
    """The reward: the share of digits in the completion (cheap, deterministic, varied)."""
    return len(re.findall(r"\d", text)) / max(1, len(text))


# ---------------------------------------------------------------------------- shared objects
def build_model(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=None,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      use_sliding_window=False, **MODEL)
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg).float().eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def matmul_params(model) -> int:
    """Weights that take part in a matmul per token (all linears incl. the tied LM head)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def matmul_peak(seconds: float = 2.0) -> dict[str, float]:
    """GFLOP/s of a float32 matmul of this model's largest shape (tokens x hidden x
    intermediate) by torch's `a @ b` (MKL on CPU) and by oneDNN with the weight packed once (what
    r1lab's linears use); the machine's peak is the faster. On AMD CPUs with full-width AVX-512
    (Zen 5) MKL takes an AVX2 path and oneDNN is ~2x faster; elsewhere they are close."""
    from r1lab import onednn

    a, b = torch.randn(4096, MODEL["hidden_size"]), torch.randn(MODEL["hidden_size"],
                                                                 MODEL["intermediate_size"])
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
            for _ in range(5):
                fn()
            best = max(best, 5 * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t))
        out[name] = best / 1e9
    return out


# ---------------------------------------------------------------------------- the two trainers
def r1lab_trainer(model, tokenizer, beta: float, run_dir: str):
    from r1lab.config import RunConfig
    from r1lab.rewards import REWARDS, Score
    from r1lab.train.grpo import GRPOTrainer

    if "bench_digit_share" not in REWARDS:
        REWARDS.register("bench_digit_share", lambda completion, row, **kw: Score(digit_share(completion)))
    cfg = RunConfig.model_validate({
        "data": {"template": "tiny"},
        "rollout": {"engine": "hf", "group_size": G, "max_new_tokens": NEW_TOKENS, "temperature": 1.0},
        "rewards": {"components": [{"name": "bench_digit_share"}]},
        "algorithm": {"advantage": "grpo", "loss": "clip", "aggregation": "token_mean",
                      "kl_estimator": "k3", "beta": beta, "eps_low": 0.2, "eps_high": 0.2,
                      "adv_eps": 1e-4, "adv_ddof": 1, "scale_rewards": "group"},
        "optim": {"lr": LR, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "grad_clip": 1.0},
        "train": {"batch_size": len(QUESTIONS), "micro_batch_size": G * len(QUESTIONS),
                  "seed": SEED, "steps": 1000},
        "log": {"progress": False},
    })
    rows = [{"question": q, "answer": ""} for q in QUESTIONS]
    return GRPOTrainer(cfg, model, tokenizer, rows, run_dir)


def trl_trainer(model, tokenizer, beta: float, steps: int, callback, model_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions, **kwargs):
        return [digit_share(c) for c in completions]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=G * len(QUESTIONS),
        gradient_accumulation_steps=1, num_generations=G, max_completion_length=NEW_TOKENS,
        temperature=1.0, top_p=1.0, learning_rate=LR, lr_scheduler_type="constant",
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, beta=beta,
        loss_type="dapo", epsilon=0.2, scale_rewards="group", max_steps=steps, seed=SEED,
        use_cpu=True, gradient_checkpointing=False,  # TRL's default is True; r1lab's False
        bf16=False, report_to=[], save_strategy="no", logging_steps=10_000,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    model.config._name_or_path = model_dir  # TRL builds its reference model from this path
    prompts = [f"Q:{q}\nA:" for q in QUESTIONS]  # r1lab's "tiny" template, pre-applied
    return GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                       train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[callback])


def interleaved(base, tokenizer, beta: float, steps: int, model_dir: str) -> dict:
    """Run TRL and r1lab alternately, one step each; step times of each."""
    from transformers import TrainerCallback

    ours = r1lab_trainer(copy.deepcopy(base), tokenizer, beta, tempfile.mkdtemp())
    times: dict[str, list] = {"trl": [], "r1lab": [], "r1lab_metrics": []}

    class Alternate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times["trl"].append(time.perf_counter() - self.t0)
            t = time.perf_counter()
            m = ours.step()
            times["r1lab"].append(time.perf_counter() - t)
            times["r1lab_metrics"].append(m)
            print(f"  step {len(times['trl']):2d}  TRL {times['trl'][-1]:6.3f} s   "
                  f"r1lab {times['r1lab'][-1]:6.3f} s   (load {os.getloadavg()[0]:.1f})", flush=True)

    trainer = trl_trainer(copy.deepcopy(base), tokenizer, beta, steps, Alternate(), model_dir)
    with contextlib.redirect_stdout(sys.stderr):  # TRL's own end-of-training log line
        trainer.train()
    print("", flush=True)
    return times


# ---------------------------------------------------------------------------- rollout speed
def generate_speed(base, tokenizer, reps: int) -> dict:
    """Completion tokens/s (eos included, padding not) at batch 64: r1lab's sampler vs
    `model.generate`, same model, prompts and sampling settings, interleaved."""
    from r1lab.rollout import SamplingParams
    from r1lab.rollout.hf import HFSampler

    model = copy.deepcopy(base).eval()
    enc = tokenizer([f"Q:{q}\nA:" for q in QUESTIONS], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"].repeat_interleave(G, 0), enc["attention_mask"].repeat_interleave(G, 0)
    prompt_ids = tokenizer([f"Q:{q}\nA:" for q in QUESTIONS])["input_ids"]
    sampler = HFSampler(model, tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def hf() -> int:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                                 top_p=1.0, temperature=1.0, max_new_tokens=NEW_TOKENS)
        comp = out[:, ids.shape[1]:]
        return int(((comp != pad) | (comp == eos)).sum())

    def r1lab() -> int:
        return int(sampler.generate(prompt_ids, SamplingParams(n=G, max_new_tokens=NEW_TOKENS,
                                                               temperature=1.0)).lengths.sum())

    rates: dict[str, list] = {"hf": [], "r1lab": []}
    for i in range(reps + 1):
        for name, fn in (("hf", hf), ("r1lab", r1lab)):
            t = time.perf_counter()
            n = fn()
            if i:  # the first round warms up
                rates[name].append(n / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in rates.items()} | {"backend": sampler.last_backend}


# ---------------------------------------------------------------------------- profile
def profile_step(base, tokenizer, beta: float, steps: int) -> None:
    """Wall time of each phase of r1lab GRPO steps (after one warm-up step)."""
    import r1lab.train.metrics as step_metrics

    tr = r1lab_trainer(copy.deepcopy(base), tokenizer, beta, tempfile.mkdtemp())
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    tr.step()
    tr.engine.generate = timed("sampling (r1lab sampler)", tr.engine.generate)
    tr.rewards = timed("reward", tr.rewards)
    tr.forward.reference = timed("reference forward", tr.forward.reference)
    tr.optimizer.step = timed("optimiser step", tr.optimizer.step)
    entropy, backward = step_metrics.sampled_entropy, torch.autograd.backward
    step_metrics.sampled_entropy = timed("entropy metric forward (only if the sampler gave none)",
                                         entropy)
    torch.autograd.backward = timed("policy backward", backward)
    tr.update = timed("_update", tr.update)
    total = 0.0
    try:
        for _ in range(steps):
            t = time.perf_counter()
            tr.step()
            total += time.perf_counter() - t
    finally:
        step_metrics.sampled_entropy, torch.autograd.backward = entropy, backward
    spent["policy forward + loss"] = (spent.pop("_update") - spent["policy backward"]
                                      - spent["optimiser step"])
    spent = {k: v for k, v in spent.items() if v > 0}
    spent["other (advantages, bookkeeping)"] = total - sum(spent.values())
    print(f"profile of {steps} r1lab GRPO steps (beta {beta}), mean per step {total / steps:.3f} s:")
    for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:36s} {s / steps:7.3f} s  {s / total:6.1%}")
    print()


# ---------------------------------------------------------------------------- main
def summary(times: dict, warmup: int) -> tuple[float, float]:
    trl = statistics.median(times["trl"][warmup:])
    ours = statistics.median(times["r1lab"][warmup:])
    return trl, ours


def step_flops(metrics: list[dict], prompt_tokens: float, n_params: int, beta: float) -> float:
    """Weight-matmul FLOPs of one step: 2P per generated token, and per trained token 2P for
    the reference forward (beta > 0), 2P for the policy forward and 4P for its backward."""
    comp = statistics.mean(m["completion_len"] for m in metrics) * G * len(QUESTIONS)
    train_tokens = comp + prompt_tokens * G
    return 2 * n_params * comp + (2 * (beta > 0) + 6) * n_params * train_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="interleaved steps per trainer")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--gen-reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--quick", action="store_true", help="5 steps, 1 warm-up, 3 generate reps")
    p.add_argument("--no-beta0", action="store_true", help="skip the beta 0 comparison")
    p.add_argument("--profile", action="store_true", help="also profile r1lab steps by phase")
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup, args.gen_reps = 5, 1, 3
    torch.set_num_threads(args.threads)
    import transformers
    import trl

    from r1lab.models.tiny import build_char_tokenizer
    from r1lab.runtime import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # before either trainer: both run with the same allocator
    tokenizer = build_char_tokenizer()
    base = build_model(tokenizer)
    model_dir = tempfile.mkdtemp()
    base.save_pretrained(model_dir)
    n_params = matmul_params(base)
    prompt_tokens = sum(len(x) for x in tokenizer([f"Q:{q}\nA:" for q in QUESTIONS])["input_ids"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {args.threads}, load {os.getloadavg()[0]:.1f} | torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__} | glibc allocator "
          f"{'tuned for both' if tuned else 'default'}")
    print(f"model: Qwen2ForCausalLM {MODEL}, vocab {len(tokenizer)} (char tokenizer), "
          f"{sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters, float32, "
          f"tied embeddings")
    print(f"setting (both): {len(QUESTIONS)} prompts x G={G}, {NEW_TOKENS} new tokens, T=1.0, "
          f"top-p 1, beta {BETA} (k3), DAPO loss (token sum / batch tokens), eps 0.2, lr {LR} "
          f"constant, AdamW (0.9, 0.999), grad clip 1, seed {SEED}, one optimiser step per 64 "
          f"completions (micro-batch 64; r1lab packs it: each prompt once per group, no padding)")
    peaks = matmul_peak()
    peak = max(peaks.values())
    print(f"float32 matmul peak on {args.threads} threads: {peak:.0f} GFLOP/s ("
          + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ")\n")

    print(f"generate at batch {G * len(QUESTIONS)} ({args.gen_reps} interleaved reps, median):")
    gen = generate_speed(base, tokenizer, args.gen_reps)
    gen_speedup = gen["r1lab"] / gen["hf"]
    print(f"  model.generate {gen['hf']:8.0f} tok/s\n  r1lab sampler  {gen['r1lab']:8.0f} tok/s "
          f"({gen['backend']} decoder)  -> {gen_speedup:.2f}x\n")

    print(f"GRPO steps, beta {BETA}, interleaved ({args.steps} each, first {args.warmup} = warm-up):")
    times = interleaved(base, tokenizer, BETA, args.steps, model_dir)
    trl_s, ours_s = summary(times, args.warmup)
    flops = step_flops(times["r1lab_metrics"][args.warmup:], prompt_tokens / len(QUESTIONS), n_params, BETA)
    print(f"  median step: TRL {trl_s:.3f} s, r1lab {ours_s:.3f} s -> {trl_s / ours_s:.2f}x")
    print(f"  r1lab achieved {flops / ours_s / 1e9:.0f} GFLOP/s ({flops / ours_s / 1e9 / peak:.0%} of "
          f"the matmul peak; weight matmuls only, {flops / 1e9:.0f} GFLOP per step)\n")
    result = {"trl_step_s": round(trl_s, 4), "r1lab_step_s": round(ours_s, 4),
              "step_speedup": round(trl_s / ours_s, 3), "generate_speedup": round(gen_speedup, 3)}

    if not args.no_beta0:
        print("separate comparison, beta 0 (TRL's default; no reference model on either side, "
              "r1lab skips completions whose advantage is exactly 0):")
        times0 = interleaved(base, tokenizer, 0.0, args.steps, model_dir)
        trl0, ours0 = summary(times0, args.warmup)
        skipped = statistics.mean(m.get("skipped_rows", 0) for m in times0["r1lab_metrics"])
        print(f"  median step: TRL {trl0:.3f} s, r1lab {ours0:.3f} s -> {trl0 / ours0:.2f}x "
              f"(r1lab skipped {skipped:.1f} of 64 completions per step)\n")
        result |= {"beta0_trl_step_s": round(trl0, 4), "beta0_r1lab_step_s": round(ours0, 4),
                   "beta0_step_speedup": round(trl0 / ours0, 3)}
    if args.profile:
        profile_step(base, tokenizer, BETA, 3 if args.quick else 5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
