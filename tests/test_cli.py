"""The `r1lab` console script, run as a user runs it (a real subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
        "model.tiny.num_kv_heads=2", "model.tiny.intermediate_size=64"]


def r1lab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def test_list_shows_every_kind():
    out = r1lab("list")
    assert out.returncode == 0, out.stderr
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp", "gae", "clip", "dual_clip", "gspo",
                 "pg", "token_mean", "seq_mean_token_sum_norm", "k3", "accuracy", "format", "hf"):
        assert name in out.stdout


def test_demo_end_to_end_writes_summary_and_checkpoints(tmp_path: Path):
    sets = [*TINY, "pretrain.steps=10", "pretrain.corpus_size=200", "train.steps=2",
            "train.batch_size=2", "rollout.group_size=2", "rollout.max_new_tokens=16",
            "eval.num_problems=6", "eval.k=2", "log.progress=false"]
    args = ["demo", "--out", str(tmp_path / "run"), "--seed", "3"]
    for s in sets:
        args += ["--set", s]
    out = r1lab(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("base_pass1", "rl_pass1", "base_think_rate", "rl_think_rate", "wall_seconds", "seed"):
        assert key in summary
    assert summary["seed"] == 3 and 0.0 <= summary["rl_pass1"] <= 1.0
    assert set(summary["protocols"]) == {"greedy", "T=0.6", "T=1"}
    assert (run / "rl" / "model.safetensors").is_file() and (run / "base" / "config.json").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert "train:\n  steps: 2" in (run / "config.yaml").read_text()
    assert "R1-Zero demo (seed 3)" in out.stdout
    assert (run / "report.html").is_file()

    # `r1lab eval` on the RL checkpoint reproduces the demo's greedy number (same problems)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {{path: {run / 'rl'}}}\nrollout: {{max_new_tokens: 16}}\n"
                   "eval: {num_problems: 6, k: 2, temperatures: [1.0]}\n")
    ev = r1lab("eval", str(cfg), "--out", str(tmp_path / "ev"))
    assert ev.returncode == 0, ev.stdout + ev.stderr
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(res) == {"greedy", "T=1"}
    assert res["greedy"]["pass1"] == summary["protocols"]["greedy"]["rl_pass1"]
    assert {"cons@2", "pass@2"} <= set(res["T=1"])


@pytest.mark.slow
def test_default_demo_makes_the_model_reason_better(tmp_path: Path):
    """The shipped demo config, as `r1lab demo` runs it (~70 s on 2 idle cores): RL must make
    the base think more and answer held-out problems better. Seed 3 is the seed that failed
    with the previous 400-step pre-training (0.144 -> 0.345); measured now 0.470 -> 0.865."""
    out = r1lab("demo", "--out", str(tmp_path / "run"), "--seed", "3", "--set", "log.progress=false")
    assert out.returncode == 0, out.stdout + out.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["heldout_problems"] == 200 and s["k"] == 4
    assert s["rl_pass1"] >= 0.75 and s["rl_pass1"] - s["base_pass1"] >= 0.25, s
    assert s["rl_think_rate"] >= 0.9 > s["base_think_rate"], s
    assert s["rl_mean_len"] > 1.4 * s["base_mean_len"], s


def test_bad_override_fails_naming_the_key_before_work(tmp_path: Path):
    out = r1lab("demo", "--out", str(tmp_path / "x"), "--set", "rollout.group_sise=4")
    assert out.returncode == 2
    assert "rollout.group_sise: unknown key" in out.stdout
    assert not (tmp_path / "x").exists()


def test_train_sft_fits_a_dataset_and_writes_a_loadable_checkpoint(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "sft.jsonl"
    pairs = {"3+4": "<think>3+4=7</think><answer>7</answer>", "10+5": "<answer>15</answer>",
             "2+2": "<think>2+2=4</think><answer>4</answer>", "8+1": "<answer>9</answer>"}
    data.write_text("".join(json.dumps({"question": q, "completion": c}) + "\n" for q, c in pairs.items()))
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"data: {{source: {data}, template: tiny}}\n"
                   "sft: {steps: 80, batch_size: 4, lr: 0.01, warmup_steps: 5}\nlog: {progress: false}\n")
    args = ["train", "sft", str(cfg), "--out", str(tmp_path / "run")]
    for s in TINY:
        args += ["--set", s]
    out = r1lab(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["rows"] == 4 and result["steps"] == 80
    assert abs(result["first_loss"] - 4.63) < 0.5  # ~uniform over the 103-token vocabulary: ln 103
    assert result["last_loss"] < 0.1 * result["first_loss"]
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok("Q:3+4\nA:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=40, do_sample=False)
    assert tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True) == pairs["3+4"]


def test_train_sft_names_the_file_and_line_of_a_bad_row(tmp_path: Path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1", "completion": "2"}\n{"question": "2+2"}\n')
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"data: {{source: {data}}}\n")
    out = r1lab("train", "sft", str(cfg), "--out", str(tmp_path / "run"))
    assert out.returncode == 2
    assert f"{data}:2" in out.stdout and "completion" in out.stdout
    assert not (tmp_path / "run").exists()  # refused before any work


def test_pipeline_r1_refuses_an_override_for_an_unknown_stage(tmp_path: Path):
    cfg = tmp_path / "r1.yaml"
    cfg.write_text("pipeline: {overrides: {stage_5: ['train.steps=1']}}\n")
    out = r1lab("pipeline", "r1", str(cfg), "--out", str(tmp_path / "run"))
    assert out.returncode == 2
    assert "pipeline" in out.stdout and "unknown stage stage_5" in out.stdout
    assert "all_scenario_rl" in out.stdout  # lists the valid stages
    assert not (tmp_path / "run").exists()
