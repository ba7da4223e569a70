"""benchmarks/bench_scaling.py: its tiny mode runs both trainers end to end and prints the JSON
line the lead's re-run reads; its FLOP count matches a hand count."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scaling.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scaling", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_flops_matches_a_hand_count():
    b = _bench()
    # tiny: L=2 layers, d=64; P=1000 matmul weights, one prompt of 2 tokens, 3 new tokens, G=8
    # generation: 3 x 2P + 4 L d (2 + 3 + 4) = 6000 + 4608; training S=5: 8P S + 8 L d S^2
    per_row = 6000 + 4 * 2 * 64 * 9 + 8 * 1000 * 5 + 8 * 2 * 64 * 25
    assert b.step_flops("tiny", 1000, [2], 3, 0.04) == 8 * per_row
    # beta 0: no reference forward (2P per token, 2 L d S^2 per row fewer)
    assert b.step_flops("tiny", 1000, [2], 3, 0.0) == 8 * (per_row - 2 * 1000 * 5 - 2 * 2 * 64 * 25)


def test_parse_points_names_the_bad_item():
    b = _bench()
    assert b.parse_points("4M:64,100M:1024") == [("4M", 64), ("100M", 1024)]
    with pytest.raises(SystemExit, match="'7M:64'"):
        b.parse_points("4M:64,7M:64")


def test_unreachable_eos_is_outside_the_model_vocabulary():
    b = _bench()
    tok, vocab = b.build_tokenizer()
    model = b.build_model("tiny", tok, vocab, 32)
    assert tok.eos_token_id == vocab == model.config.vocab_size
    assert model.lm_head.weight.shape[0] == vocab  # no logit for eos: it is never sampled


@pytest.mark.slow  # three processes import TRL and train: ~2 min on the loaded 2-core machine
def test_dry_run_prints_the_json_line_last():
    """`--dry-run` (a 0.09M Qwen2, 8 tokens, 2 interleaved steps, each side's memory run) ends
    with the JSON line of `--quick`'s shape, with positive finite numbers."""
    pytest.importorskip("trl")
    res = subprocess.run([sys.executable, str(BENCH), "--dry-run"], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == {"precision", "points", "min_step_speedup"} and out["precision"] == "fp32"
    (point,) = out["points"]
    assert set(point) == {"params", "new_tokens", "step_speedup", "r1lab_peak_mb", "trl_peak_mb"}
    assert point["new_tokens"] == 8 and point["params"] == 89216  # the tiny Qwen2, 8 tokens
    for key in ("step_speedup", "r1lab_peak_mb", "trl_peak_mb"):
        assert math.isfinite(point[key]) and point[key] > 0
    assert out["min_step_speedup"] == point["step_speedup"]


def test_step_split_prints_each_stage_per_step():
    """benchmarks/step_split.py on the tiny Qwen2: a row per stage, a column per step, and the
    stages inside the step (generate + reference + update <= step <= wall)."""
    script = BENCH.with_name("step_split.py")
    res = subprocess.run([sys.executable, str(script), "tiny", "8", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    rows = {ln.split()[0]: [float(v) for v in ln.split()[1:]] for ln in lines[2:]}
    assert {"generate_s", "probe_s", "reference_s", "update_s", "step_s", "wall_s"} <= set(rows)
    assert all(len(v) == 2 for v in rows.values())
    for i in range(2):
        parts = rows["generate_s"][i] + rows["reference_s"][i] + rows["update_s"][i]
        assert 0 < parts <= rows["step_s"][i] <= rows["wall_s"][i]
    assert rows["probe_s"] == [0.0, 0.0]  # served by the update's forward: no forward of its own
