"""r1lab's C kernels on vs off, A/B in one process on `bench_vs_trl.py`'s model and batch.

    .venv/bin/python benchmarks/ab_kernels.py            # ~1 min on 2 idle cores

Times a 64x64 decode (8 prompts x G=8, 64 new tokens, T=1), a packed policy forward+backward
and a packed reference forward (inference mode) over the decode's completions, alternating
kernels on / off each repetition so machine drift hits both; prints the medians and off/on.
"Off" is exactly what `R1LAB_KERNELS=0` runs (every kernel call site asks
`kernels.available()`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_vs_trl as bench  # noqa: E402

from r1lab import kernels  # noqa: E402
from r1lab.models.tiny import build_char_tokenizer  # noqa: E402
from r1lab.rollout import SamplingParams  # noqa: E402
from r1lab.rollout.hf import HFSampler  # noqa: E402
from r1lab.runtime import tune_cpu_allocator  # noqa: E402
from r1lab.train.packed import PackedBatch, packed_logprobs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not kernels.available():
        sys.exit(f"the kernels are not available here: {kernels.why_unavailable()}")
    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(bench.SEED)
    tok = build_char_tokenizer()
    model = bench.build_model(tok).eval()
    prompts = tok([f"Q:{q}\nA:" for q in bench.QUESTIONS])["input_ids"]
    sampler = HFSampler(model, tok)
    params = SamplingParams(n=bench.G, max_new_tokens=bench.NEW_TOKENS, temperature=1.0, seed=1)

    def decode():
        return sampler.generate(prompts, params)

    roll = decode()
    pairs = [(prompts[i // bench.G], roll.completion_ids[i, : int(roll.lengths[i])].tolist())
             for i in range(len(roll.lengths))]
    pb = PackedBatch.from_pairs(pairs)

    def forward_backward():
        logp, _ = packed_logprobs(model, pb)
        logp.sum().backward()
        model.zero_grad(set_to_none=True)

    def reference():
        with torch.inference_mode():
            packed_logprobs(model, pb)

    parts = {"64x64 decode": decode, "packed forward+backward": forward_backward,
             "reference forward": reference}
    real = kernels.available
    times: dict[tuple[str, bool], list[float]] = {(n, on): [] for n in parts for on in (True, False)}
    try:
        for rep in range(args.reps + 1):  # the first repetition warms up
            for on in (True, False):
                kernels.available = real if on else (lambda: False)
                for name, fn in parts.items():
                    t = time.perf_counter()
                    fn()
                    if rep:
                        times[(name, on)].append(time.perf_counter() - t)
    finally:
        kernels.available = real
    print(f"{int(roll.lengths.sum())} completion tokens, {len(pb.ids)} packed positions, "
          f"{args.threads} threads, medians of {args.reps}")
    for name in parts:
        on, off = (statistics.median(times[(name, k)]) for k in (True, False))
        print(f"  {name:24s} kernels on {on * 1e3:7.1f} ms   off {off * 1e3:7.1f} ms   off/on {off / on:.2f}x")


if __name__ == "__main__":
    main()
