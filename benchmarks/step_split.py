"""Where one r1lab GRPO step's time goes, by stage, at one point of `bench_scaling.py`'s grid.

    .venv/bin/python benchmarks/step_split.py 25M 64            # 4 steps after a warm-up
    .venv/bin/python benchmarks/step_split.py tiny 8 --steps 1  # seconds

The same objects and settings as `bench_scaling.py` (Qwen2 from a config, 2 prompts x G=8,
EOS off, beta 0.04, fp32), r1lab alone: each stage's seconds as the step itself times them
(`generate_s`, `probe_s`, `reference_s`, `update_s`, ...), one column per step, and the wall
time. Run it on an idle machine; the CPU model is printed first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_scaling as B  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("size", choices=sorted(B.SIZES))
    p.add_argument("new_tokens", type=int)
    p.add_argument("--steps", type=int, default=4, help="timed steps, after one warm-up step")
    p.add_argument("--prompts", type=int, default=2)
    args = p.parse_args()
    print(f"machine: {B.cpu_model()} | load {B.uptime()}")
    tokenizer, base, _, _ = B.setup(args.size, args.new_tokens)
    trainer = B.r1lab_trainer(base, tokenizer, args.prompts, args.new_tokens, tempfile.mkdtemp())
    trainer.step()  # warm-up: kernels built, allocator settled
    steps = []
    for _ in range(args.steps):
        t = time.perf_counter()
        m = trainer.step()
        m["wall_s"] = time.perf_counter() - t
        steps.append(m)
    print(f"r1lab {args.size} x {args.new_tokens} tokens, {args.prompts} prompts x G={B.G}: "
          "seconds per stage, one column per step")
    for key in sorted(k for k in steps[0] if k.endswith("_s")):
        print(f"  {key:<14}" + "".join(f"{m[key]:>8.3f}" for m in steps))


if __name__ == "__main__":
    main()
