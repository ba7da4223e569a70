"""The GPU check's measurements (run by benchmarks/gpu_check.sh): GRPO steps in bf16 on a ~0.5B
Qwen2 built from a config (random weights, a tokenizer built here: no hub access), three ways:

- r1lab, native sampler (`rollout.engine: hf`);
- r1lab, vLLM colocated (`rollout.engine: vllm`, sleep/wake);
- TRL's GRPOTrainer with vLLM colocate, same model, same batch.

Each reports step time, generated tokens/s, peak CUDA memory, MFU (model FLOPs of sampling +
training over the step time, against the GPU's dense bf16 peak) and, for r1lab, the log-prob
probe after each weight sync (`rollout/mismatch_kl`). One JSON file holds it all.

    python benchmarks/gpu_check.py --out gpu_check.json            # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/check.json  # CPU, tiny model, seconds

A side whose package is missing (vllm, trl) is reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

#: Qwen2-0.5B's shape (vocabulary included: the logits are much of the memory)
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512)
#: dense bf16 tensor-core peak, FLOP/s (H100/H200 SXM: 989 TFLOP/s; A100: 312)
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def build_model_dir(path: Path, shape: dict, max_len: int) -> int:
    """A random Qwen2 of `shape` and a word-level tokenizer covering its vocabulary (the char
    tokenizer's ids first, then filler tokens), saved as an HF directory; returns #params."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from r1lab.models.tiny import R1_TAGS, build_char_tokenizer

    char = build_char_tokenizer()
    vocab = dict(char.get_vocab())  # characters and the R1 tags: the same ids as the demo's
    for i in range(len(vocab), shape["vocab_size"]):
        vocab[f"<t{i}>"] = i
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>",
                                  eos_token="<|endoftext|>", unk_token="<|unk|>",
                                  padding_side="left")
    tok.add_tokens(list(R1_TAGS))  # matched whole before the per-character split
    cfg = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=max_len,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, use_sliding_window=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def r1lab_run(model_dir: Path, out: Path, engine: str, args) -> dict:
    """`python -m r1lab train grpo` on the model; per-step metrics from its metrics.jsonl."""
    import yaml

    cfg = {
        "model": {"path": str(model_dir), "dtype": "float32" if args.dry_run else "bfloat16"},
        "data": {"train_size": 64, "heldout_size": 2, "template": "tiny"},
        "rollout": {"engine": engine, "group_size": args.group, "max_new_tokens": args.tokens},
        "rewards": {"components": [{"name": "format"}, {"name": "accuracy"}]},
        "train": {"steps": args.steps, "batch_size": args.prompts,
                  "micro_batch_size": args.group * args.prompts, "seed": 1},
        "optim": {"lr": 1e-6},
        "eval": {"num_problems": 2, "k": 1, "temperatures": [1.0], "greedy": False},
        "log": {"progress": False, "samples_per_step": 0},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "r1lab", "train", "grpo", str(out / "config.yaml"),
                           "--out", str(out / "run")], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-2000:] or proc.stdout[-2000:]}
    steps = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"wall_s": time.perf_counter() - t0, "steps": steps}


def summarise(steps: list[dict], n_params: int, args, peak: float | None) -> dict:
    """Step time / tokens/s / memory / MFU over the steps after the first (warm-up)."""
    warm = steps[1:] or steps
    step_s = sum(s["step_s"] for s in warm) / len(warm)
    gen_tokens = sum(s["completion_len"] for s in warm) / len(warm) * args.group * args.prompts
    # sampling 2 N t per token, training 6 N t (forward + backward) per token
    flops = 8 * n_params * gen_tokens
    out = {"step_s": round(step_s, 3), "generate_s": round(sum(s["generate_s"] for s in warm) / len(warm), 3),
           "tokens_per_s": round(gen_tokens / step_s, 1), "mfu": round(flops / step_s / peak, 4) if peak else None}
    for key in ("memory/peak_cuda_mb", "memory/peak_rss_mb", "rollout/mismatch_kl", "rollout/mismatch_max"):
        vals = [s[key] for s in steps if key in s]
        if vals:
            out[key] = max(vals)
    return out


def trl_run(model_dir: Path, args) -> dict:
    """TRL GRPOTrainer, vLLM colocate, bf16, the same batch; timed per step by a callback."""
    try:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as exc:
        return {"skipped": f"trl not installed ({exc})"}
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    gpu = torch.cuda.is_available()
    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.group * args.prompts,
                     num_generations=args.group, max_completion_length=args.tokens,
                     learning_rate=1e-6, max_steps=args.steps, bf16=gpu, use_cpu=not gpu,
                     use_vllm=gpu, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                     gradient_checkpointing=False,  # TRL's default is True; r1lab's False
                     report_to=[], save_strategy="no", logging_steps=10_000, disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data = Dataset.from_dict({"prompt": [f"Q:{i}+{i}=?\nA:" for i in range(64)]})
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **k: [0.0] * len(completions),
                          args=cfg, processing_class=tok, train_dataset=data, callbacks=[Timer()])
    trainer.train()
    warm = times[1:] or times
    out = {"step_s": round(sum(warm) / len(warm), 3)}
    if gpu:
        out["memory/peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, a tiny Qwen2, 2 steps")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512)
    args = p.parse_args()
    if args.dry_run:
        args.steps, args.prompts, args.group, args.tokens = 2, 2, 2, 8
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    peak = next((v for k, v in PEAKS.items() if gpu and k in gpu), None)
    report: dict = {"gpu": gpu, "peak_flops": peak, "dry_run": args.dry_run,
                    "torch": torch.__version__, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp, "qwen2")
        n_params = build_model_dir(model_dir, TINY if args.dry_run else QWEN2_05B,
                                   max_len=128 + args.tokens)
        report["params"] = n_params
        engines = ["hf", "vllm"]
        for engine in engines:
            if engine == "vllm" and not gpu:
                report["r1lab_vllm"] = {"skipped": "no CUDA GPU"}
                continue
            run = r1lab_run(model_dir, Path(tmp, engine), engine, args)
            key = "r1lab_native" if engine == "hf" else "r1lab_vllm"
            report[key] = run if "error" in run else summarise(run["steps"], n_params, args, peak)
        report["trl_vllm_colocate"] = trl_run(model_dir, args)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
