"""The `r1lab` console script, run as a user runs it (a real subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_bad_override_fails_naming_the_key_before_work(tmp_path: Path):
    out = r1lab("demo", "--out", str(tmp_path / "x"), "--set", "rollout.group_sise=4")
    assert out.returncode == 2
    assert "rollout.group_sise: unknown key" in out.stdout
    assert not (tmp_path / "x").exists()
