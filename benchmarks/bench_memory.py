"""Peak memory of one training forward+backward at R1 lengths, with and without the memory
tools: gradient checkpointing (`train.gradient_checkpointing`) and log-probs without full
logits (`r1lab.train.memory.lean_logprobs`), on the padded Hugging Face forward and on the
packed forward (the default training path; with checkpointing on it recomputes each layer and
the LM head per chunk in the backward).

A ~50M-parameter Llama (hidden 512, 10 layers, vocabulary 32,000, so the logits matter),
4 completions x 1,024 tokens after a 16-token prompt, fp32 on CPU. Each mode runs in a fresh
process, and reports the growth of its peak RSS over the RSS after the model, batch and
optimiser-free setup (the activations and gradients of the step), plus the step time.

    .venv/bin/python benchmarks/bench_memory.py            # ~50M model, 1,024 tokens
    .venv/bin/python benchmarks/bench_memory.py --dry-run  # tiny model, 32 tokens: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

MODES = ("full_logits", "lean_logprobs", "checkpointing", "checkpointing+lean", "packed",
         "packed+checkpointing")
SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=10, num_attention_heads=8,
             num_key_value_heads=8, vocab_size=32000)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=512)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one(mode: str, shape: dict, tokens: int, rows: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1lab.train.common import completion_logprobs, join_prompt_completion
    from r1lab.train.memory import enable_gradient_checkpointing, lean_logprobs
    from r1lab.train.packed import PackedBatch, packed_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=tokens + 32,
                                         tie_word_embeddings=True)).train()
    if "checkpointing" in mode:
        enable_gradient_checkpointing(model)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, shape["vocab_size"], (16,), generator=gen).tolist() for _ in range(rows)]
    comp = torch.randint(5, shape["vocab_size"], (rows, tokens), generator=gen)  # [R, T]
    mask = torch.ones(rows, tokens)
    ids, attn, pos, L = join_prompt_completion(prompts, comp, mask, 0)  # [R, 16+T]
    base = rss_mb()
    t0 = time.perf_counter()
    if mode.startswith("packed"):  # +checkpointing: layers and LM-head chunks recomputed
        logp = packed_logprobs(model, PackedBatch.from_padded(ids, attn, L, torch.arange(rows)))[0]
    elif "lean" in mode:
        logp = lean_logprobs(model, ids, attn, pos, L, chunk_tokens=1024)
    else:
        logp = completion_logprobs(model, ids, attn, pos, L)
    (logp * mask).sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_params = sum(p.numel() for p in model.parameters())
    return {"mode": mode, "params_m": round(n_params / 1e6, 1), "step_peak_mb": round(peak - base, 1),
            "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--rows", type=int, default=4)
    args = p.parse_args()
    shape, tokens = (TINY, 32) if args.dry_run else (SHAPE, args.tokens)
    if args.mode:  # the child: one mode, one JSON line
        torch.set_num_threads(2)
        print(json.dumps(one(args.mode, shape, tokens, args.rows)))
        return
    results = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--mode", mode, "--tokens", str(tokens), "--rows",
               str(args.rows)] + (["--dry-run"] if args.dry_run else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"tokens": tokens, "rows": args.rows, "load": os.getloadavg(),
                      "results": results}))


if __name__ == "__main__":
    main()
