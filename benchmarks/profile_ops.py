"""Operator-level look at the pieces of an r1lab GRPO step on CPU (the numbers behind RESULTS.md).

    .venv/bin/python benchmarks/profile_ops.py            # ~1 min on 2 idle cores
    .venv/bin/python benchmarks/profile_ops.py --table    # + torch.profiler tables

Uses `bench_vs_trl.py`'s model (Qwen2-style, 4.23M parameters, fp32) and a batch shaped like
its steps (8 prompts x G=8, completions of up to 64 tokens, 65% of them at the cap). Prints,
interleaved so machine drift hits both sides:

1. training forward+backward and reference forward: the padded Hugging Face forward
   (`completion_logprobs`, one call) vs the packed forward (`train/packed.py`);
2. one 64 x 64 decode by r1lab's sampler, split into decoder steps / sampling / the rest;
3. the decoder's matmul shapes at M = 8 / 16 / 32 / 40 / 64: MKL vs oneDNN with packed weights
   (what the decoder uses above 64 rows) vs the few-row C kernel (at <= 64 rows, AVX-512
   CPUs: `r1lab.kernels.small_gemm`), cycling through all the layers' weights as a decoding
   step does.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench_vs_trl as B  # noqa: E402


def medians(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each function, called in turn `reps` times after one warm-up each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def training(base, tokenizer, reps: int, table: bool) -> None:
    from r1lab.train.common import completion_logprobs, join_prompt_completion
    from r1lab.train.packed import PackedBatch, packed_logprobs

    g = torch.Generator().manual_seed(0)
    prompts = tokenizer([f"Q:{q}\nA:" for q in B.QUESTIONS])["input_ids"]
    N, T = B.G * len(B.QUESTIONS), B.NEW_TOKENS
    capped = torch.rand(N, generator=g) < 0.65
    lengths = torch.where(capped, torch.full((N,), T), torch.randint(3, T - 3, (N,), generator=g))
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    comp = torch.randint(5, len(tokenizer), (N, T), generator=g).masked_fill(mask == 0, 0)
    ids, attn, pos, L = join_prompt_completion(prompts, comp, mask, tokenizer.pad_token_id)
    model = copy.deepcopy(base).train()
    rows = torch.arange(N)

    def padded(grad: bool):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad), (contextlib.nullcontext() if grad else torch.inference_mode()):
            lp = completion_logprobs(model, ids, attn, pos, L)
            if grad:
                (lp * mask).sum().backward()

    def packed(grad: bool):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad), (contextlib.nullcontext() if grad else torch.inference_mode()):
            lp, _ = packed_logprobs(model, PackedBatch.from_padded(ids, attn, L, rows))
            if grad:
                (lp * mask).sum().backward()

    pb = PackedBatch.from_padded(ids, attn, L, rows)
    print(f"training batch: {N} completions, {int(mask.sum())} completion tokens; padded forward "
          f"computes {ids.shape[0] * (ids.shape[1] - int((attn.sum(0) == 0).sum()))} positions, "
          f"packed {len(pb.ids)}")
    m = medians({"padded fwd+bwd": lambda: padded(True), "packed fwd+bwd": lambda: packed(True),
                 "padded ref fwd": lambda: padded(False), "packed ref fwd": lambda: packed(False)},
                reps)
    for k, v in m.items():
        print(f"  {k:16s} {v:6.3f} s")
    print()
    if table:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as p:
            packed(True)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def decoding(base, tokenizer, reps: int, table: bool) -> None:
    import r1lab.rollout.hf as hf
    import r1lab.rollout.native as native
    from r1lab.rollout import SamplingParams

    model = copy.deepcopy(base).eval()
    sampler = hf.HFSampler(model, tokenizer)
    prompts = tokenizer([f"Q:{q}\nA:" for q in B.QUESTIONS])["input_ids"]
    params = SamplingParams(n=B.G, max_new_tokens=B.NEW_TOKENS, temperature=1.0, seed=3)
    spent: dict[str, float] = {}

    def timed(owner, name: str, label: str):
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
        setattr(owner, name, wrapper)
        return fn

    sampler.generate(prompts, params)
    originals = [(native.NativeDecoder, "step", timed(native.NativeDecoder, "step", "decoder steps")),
                 (native.NativeDecoder, "keep", timed(native.NativeDecoder, "keep", "dropping rows")),
                 (hf, "sample_next", timed(hf, "sample_next", "sampling"))]
    totals, tokens = [], 0
    try:
        for _ in range(reps):
            t = time.perf_counter()
            tokens = int(sampler.generate(prompts, params).lengths.sum())
            totals.append(time.perf_counter() - t)
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    total = sum(totals)
    print(f"decode, batch 64, {tokens} tokens: {statistics.median(totals):.3f} s median "
          f"({tokens / statistics.median(totals):.0f} tok/s)")
    for k, v in spent.items():
        print(f"  {k:16s} {v / reps:6.3f} s  {v / total:5.1%}")
    print(f"  {'the rest':16s} {(total - sum(spent.values())) / reps:6.3f} s\n")
    if table:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as p:
            sampler.generate(prompts, params)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def weight_streaming(reps: int) -> None:
    """The decoder's five projections per layer at M = 8 / 16 / 32 / 40 / 64, cycling through the
    4 layers' distinct weights (17 MB) as a decoding step does: MKL (`F.linear`) vs oneDNN with
    the weight packed once (`r1lab.onednn.Linear`, what the decoder uses above 64 rows) vs the
    few-row C kernel (at <= 64 rows on AVX-512 CPUs), and MKL with one layer's weights four
    times (hot in L2)."""
    from r1lab import kernels
    from r1lab.onednn import Linear, onednn_usable

    d, inter = B.MODEL["hidden_size"], B.MODEL["intermediate_size"]
    shapes = [(3 * d, d), (d, d), (inter, d), (inter, d), (d, inter)]
    weights = [torch.randn(*s) for _ in range(B.MODEL["num_hidden_layers"]) for s in shapes]
    big = kernels.SMALL_GEMM_ROWS + 1  # a rows hint past the kernel's: oneDNN
    packed = [Linear(w, rows=big) for w in weights] if onednn_usable() else []
    # the few-row C kernel (what the decoder takes at <= 64 rows where `kernels.gemm_rule` says)
    panels = [Linear(w, rows=16) for w in weights] if kernels.gemm_supports(weights[0]) else []
    for M in (8, 16, 32, 40, 64):
        xs = {d: torch.randn(M, d), inter: torch.randn(M, inter)}
        flops = sum(2 * M * w.shape[0] * w.shape[1] for w in weights)
        hot = weights[:len(shapes)] * B.MODEL["num_hidden_layers"]  # one layer's, repeated
        fns = {"MKL, cycling": lambda xs=xs: [F.linear(xs[w.shape[1]], w) for w in weights],
               "MKL, hot": lambda xs=xs, hot=hot: [F.linear(xs[w.shape[1]], w) for w in hot]}
        if packed:
            fns["oneDNN, cycling"] = lambda xs=xs: [lin(xs[lin.in_features]) for lin in packed]
        if panels:
            fns["C kernel, cycling"] = lambda xs=xs: [lin(xs[lin.in_features]) for lin in panels]
        m = medians(fns, reps * 10)
        print(f"decoder matmuls at M={M}, one step's worth ({flops / 1e9:.2f} GFLOP):")
        for k, v in m.items():
            print(f"  {k:16s} {v * 1e3:6.2f} ms  {flops / v / 1e9:5.0f} GFLOP/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--table", action="store_true", help="print torch.profiler operator tables")
    args = p.parse_args()
    torch.set_num_threads(2)
    from r1lab.models.tiny import build_char_tokenizer
    from r1lab.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    tokenizer = build_char_tokenizer()
    base = B.build_model(tokenizer)
    training(base, tokenizer, args.reps, args.table)
    decoding(base, tokenizer, args.reps, args.table)
    weight_streaming(args.reps)


if __name__ == "__main__":
    main()
