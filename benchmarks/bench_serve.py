"""`r1lab serve` throughput with concurrent clients: requests batched (`--max-batch 16`) vs
one at a time (`--max-batch 1`), same server, model and workload, in one run.

    .venv/bin/python benchmarks/bench_serve.py        # ~1-2 min on 2 idle cores

The model is `bench_vs_trl.py`'s (a 4.2M-parameter Qwen2 built from a config, char tokenizer,
float32), saved to a temporary folder and served by a real `r1lab serve` process. The workload:
`--clients` threads send `--requests` chat requests in all (T=1, `--max-tokens` new tokens,
different questions) over HTTP; the time is from the first request to the last answer. Each
setting runs `--rounds` times, alternating, and the medians are compared. The last line is JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt: Path, max_batch: int, max_tokens: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", str(ckpt), "--port", str(port),
                             "--template", "tiny", "--max-tokens", str(max_tokens), "--max-batch", str(max_batch)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/health", timeout=1).close()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the server exited") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def workload(base: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    def ask(i: int) -> tuple[int, int]:
        body = {"messages": [{"role": "user", "content": f"{10 + i}+{i * 7 % 90}"}], "temperature": 1.0,
                "max_tokens": max_tokens}
        req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.load(r)["usage"]["completion_tokens"], int(r.headers["x-r1lab-batch-prompts"])

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(ask, range(requests)))
    wall = time.perf_counter() - t
    return {"wall_s": wall, "tokens": sum(n for n, _ in out), "mean_batch": statistics.mean(b for _, b in out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    import bench_vs_trl as bench
    import torch

    from r1lab.models.tiny import build_char_tokenizer

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = bench.build_model(tok)
    results: dict[int, list[dict]] = {1: [], 16: []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model"
        model.save_pretrained(ckpt)
        tok.save_pretrained(ckpt)
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} | model {bench.MODEL}, "
              f"{sum(q.numel() for q in model.parameters()) / 1e6:.2f}M parameters, float32 | "
              f"{args.requests} requests from {args.clients} clients, T=1, {args.max_tokens} new tokens max")
        for r in range(args.rounds):
            for max_batch in (1, 16):
                proc, base = start(ckpt, max_batch, args.max_tokens)
                try:
                    workload(base, 2, 2, args.max_tokens)  # warm-up
                    res = workload(base, args.clients, args.requests, args.max_tokens)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                results[max_batch].append(res)
                print(f"  round {r + 1} --max-batch {max_batch:2d}: {res['wall_s']:6.2f} s, "
                      f"{res['tokens'] / res['wall_s']:7.0f} tok/s, {args.requests / res['wall_s']:5.1f} req/s, "
                      f"mean batch {res['mean_batch']:.1f} prompts")
    one, many = (statistics.median(x["wall_s"] for x in results[b]) for b in (1, 16))
    tps = {b: statistics.median(x["tokens"] / x["wall_s"] for x in results[b]) for b in (1, 16)}
    print(f"median wall: one at a time {one:.2f} s, batched {many:.2f} s -> {one / many:.2f}x the throughput")
    print(json.dumps({"one_at_a_time_s": round(one, 3), "batched_s": round(many, 3), "speedup": round(one / many, 3),
                      "one_at_a_time_tok_s": round(tps[1]), "batched_tok_s": round(tps[16])}))


if __name__ == "__main__":
    main()
