"""`r1lab serve` under load, behind its guard: 320 requests from 32 threads, 40 of them malformed
(bad JSON, missing or wrong fields, a missing or wrong API key, an oversized body); every one must
get the status it should (200, 400, 401, 413), and the p50/p99 latency of the good ones is printed.

    .venv/bin/python benchmarks/bench_serve_load.py      # ~1 min on 2 idle cores

Localhost only, bounded (`--requests`, `--max-tokens`, every call with a timeout). The model is the
demo's (`TinyModelConfig()` defaults: 128 hidden, 4 layers, char tokenizer, float32, random
weights), saved to a temporary folder and served by a real `r1lab serve --api-key` process with
its default batching (`--max-batch 16`). Good requests: T=1, `--max-tokens` new tokens, distinct
questions. The last line is JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

KEY = "sk-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt: Path, max_tokens: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", str(ckpt), "--host", "127.0.0.1",
                             "--port", str(port), "--api-key", KEY, "--max-tokens", str(max_tokens),
                             "--max-request-bytes", "65536"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            urllib.request.urlopen(base + "/health", timeout=1).close()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the server exited") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def good(i: int, max_tokens: int) -> tuple[bytes, dict, int]:
    body = {"messages": [{"role": "user", "content": f"{10 + i}+{i * 7 % 90}"}], "temperature": 1.0,
            "max_tokens": max_tokens}
    return json.dumps(body).encode(), {"Authorization": f"Bearer {KEY}"}, 200


MALFORMED = [  # (body, headers, expected status), 8 kinds x 5 = 40
    (b"{not json", {"Authorization": f"Bearer {KEY}"}, 400),
    (json.dumps({"messages": []}).encode(), {"Authorization": f"Bearer {KEY}"}, 400),
    (json.dumps({"messages": [{"role": "wizard", "content": "1+1"}]}).encode(), {"Authorization": f"Bearer {KEY}"}, 400),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "temperature": -1}).encode(),
     {"Authorization": f"Bearer {KEY}"}, 400),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "max_tokens": 10**6}).encode(),
     {"Authorization": f"Bearer {KEY}"}, 400),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}]}).encode(), {}, 401),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}]}).encode(), {"Authorization": "Bearer nope"}, 401),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 70000}]}).encode(), {"Authorization": f"Bearer {KEY}"}, 413),
]


def send(base: str, body: bytes, headers: dict) -> tuple[int, float]:
    req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", **headers})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            json.load(r)
            status = r.status
    except urllib.error.HTTPError as e:
        json.load(e)  # every error is an OpenAI-style JSON body
        status = e.code
    return status, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--malformed", type=int, default=40)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args()
    import torch

    from r1lab.config import TinyModelConfig
    from r1lab.models.tiny import build_char_tokenizer, build_tiny_model

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tok, seed=0)
    jobs = [good(i, args.max_tokens) for i in range(args.requests - args.malformed)]
    jobs += [MALFORMED[i % len(MALFORMED)] for i in range(args.malformed)]
    random.Random(0).shuffle(jobs)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "demo"
        model.save_pretrained(ckpt)
        tok.save_pretrained(ckpt)
        (ckpt / "r1lab_template.json").write_text(json.dumps({"template": "tiny", "format": "Q:{question}\nA:"}))
        proc, base = start(ckpt, args.max_tokens)
        try:
            for i in range(3):  # warm-up: the first generation builds and probes the kernels
                send(base, *good(10_000 + i, args.max_tokens)[:2])
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
                out = list(pool.map(lambda j: send(base, j[0], j[1]), jobs))
            wall = time.perf_counter() - t
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    wrong = [(want, got) for (_, _, want), (got, _) in zip(jobs, out, strict=True) if want != got]
    lat = sorted(s for (_, _, want), (_, s) in zip(jobs, out, strict=True) if want == 200)
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    bad = sorted(s for (_, _, want), (_, s) in zip(jobs, out, strict=True) if want != 200)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} (1-min average, before the end) | "
          f"demo model {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M parameters | {args.requests} "
          f"requests ({args.malformed} malformed) from {args.threads} threads, {args.max_tokens} new tokens max")
    print(f"answered as expected: {len(jobs) - len(wrong)}/{len(jobs)}; wall {wall:.2f} s; good requests "
          f"p50 {p50:.3f} s, p99 {p99:.3f} s; malformed p99 {bad[int(0.99 * (len(bad) - 1))]:.3f} s; server alive: {alive}")
    if wrong:
        print("unexpected statuses (want, got):", wrong[:10])
    print(json.dumps({"requests": len(jobs), "malformed": args.malformed, "threads": args.threads,
                      "as_expected": len(jobs) - len(wrong), "p50_s": round(p50, 3), "p99_s": round(p99, 3),
                      "wall_s": round(wall, 2), "load": round(os.getloadavg()[0], 1)}))
    sys.exit(0 if not wrong and alive else 1)


if __name__ == "__main__":
    main()
