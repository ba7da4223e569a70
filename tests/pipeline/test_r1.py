"""The R1 pipeline chains its four stages checkpoint to checkpoint, applies per-stage
overrides, and a second run skips what is done."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from r1lab.config import RunConfig
from r1lab.pipeline.r1 import run_r1

MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}


def test_four_stages_chain_their_checkpoints_and_resume_at_stage_granularity(tmp_path, capsys):
    cold = tmp_path / "cold.jsonl"
    cold.write_text("".join(json.dumps({"question": q, "completion": c}) + "\n" for q, c in
                            [("1+2", "<think>1+2=3</think><answer>3</answer>"),
                             ("4+4", "<think>4+4=8</think><answer>8</answer>")]))
    cfg = RunConfig.model_validate({
        "model": {"tiny": MICRO},
        "data": {"train_size": 20, "heldout_size": 4},
        "rollout": {"group_size": 2, "max_new_tokens": 8},
        "train": {"steps": 2, "batch_size": 2, "micro_batch_size": 4, "seed": 5},
        "sft": {"steps": 2, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0},
        "reject": {"samples_per_prompt": 2, "num_prompts": 3, "min_scores": {}},
        "eval": {"num_problems": 2, "k": 1, "temperatures": [1.0], "greedy": False},
        "pipeline": {"cold_start": str(cold), "overrides": {"all_scenario_rl": ["train.steps=1"]}},
        "log": {"progress": False},
    })
    out = tmp_path / "r1"
    results = run_r1(cfg, out)
    assert list(results) == ["cold_start", "reasoning_rl", "rejection_sampling", "rejection_sft",
                             "all_scenario_rl"]

    def model_path(folder: str):
        return yaml.safe_load((out / folder / "config.yaml").read_text())["model"]["path"]

    assert model_path("1_cold_start") is None  # the configured (tiny) base
    assert model_path("2_reasoning_rl") == results["cold_start"]["final"]
    assert model_path("3_rejection_sampling") == results["reasoning_rl"]["final"]
    assert model_path("3_rejection_sft") is None  # R1 fine-tunes the base on the samples
    assert model_path("4_all_scenario_rl") == results["rejection_sft"]["final"]
    assert yaml.safe_load((out / "1_cold_start" / "config.yaml").read_text())["data"]["source"] == str(cold)
    # min_scores {} keeps one sample per prompt: 3 rows, which stage 3's SFT trains on
    assert results["rejection_sampling"]["kept_rows"] == 3 == results["rejection_sft"]["rows"]
    assert results["reasoning_rl"]["steps"] == 2 and results["all_scenario_rl"]["steps"] == 1
    assert (out / "4_all_scenario_rl" / "final" / "config.json").is_file()
    # a synthetic task: every stage that makes a model is evaluated on its held-out problems
    for name in ("cold_start", "reasoning_rl", "rejection_sft", "all_scenario_rl"):
        assert set(results[name]["eval"]) == {"T=1"} and 0.0 <= results[name]["eval"]["T=1"] <= 1.0
    ev = json.loads((out / "1_cold_start" / "eval.json").read_text())
    assert ev["T=1"]["pass1"] == results["cold_start"]["eval"]["T=1"] and len(ev["T=1"]["samples"]) == 2
    printed = capsys.readouterr().out
    assert "held-out pass@1 by stage (2 problems)" in printed, printed[-3000:]
    assert "no checkpoint" not in printed and "warning" not in printed  # a fresh run is not a resume
    for name in ("cold_start", "reasoning_rl", "rejection_sft", "all_scenario_rl"):
        assert re.search(rf"│\s*{name}\s*│\s*{results[name]['eval']['T=1']:.3f}\s*│", printed), name
    # a second run finds every stage done: nothing is re-run, the results are the same
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")}
    assert len(stamps) == 5
    again = run_r1(cfg, out)
    assert again == json.loads((out / "summary.json").read_text()) == results
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")} == stamps


def test_synthetic_cold_start_is_worked_training_problems_in_the_r1_format(tmp_path):
    from r1lab.data.tasks import make_addition
    from r1lab.pipeline.r1 import cold_start_source

    cfg = RunConfig.model_validate({"data": {"min_digits": 1, "max_digits": 2},
                                    "pipeline": {"cold_start": "synthetic:addition:12"}})
    path = cold_start_source(cfg, tmp_path)
    assert path == str(tmp_path / "cold_start.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "cold_start.jsonl").read_text().splitlines()]
    assert len(rows) == 12 == len({r["question"] for r in rows})  # distinct problems
    heldout = set()
    import random
    rng = random.Random(0)
    for _ in range(5000):  # the task's held-out problems (a hash decides): none may appear
        p = make_addition(rng, min_digits=1, max_digits=2)
        if p.heldout:
            heldout.add(p.question)
    assert heldout and not heldout & {r["question"] for r in rows}
    for r in rows:
        a, b = map(int, r["question"].split("+"))
        assert r["answer"] == str(a + b)
        assert r["completion"].startswith("<think>") and r["completion"].endswith(f"</think><answer>{a + b}</answer>")
    first = (tmp_path / "cold_start.jsonl").read_text()
    (tmp_path / "cold_start.jsonl").unlink()
    assert cold_start_source(cfg, tmp_path) == path and (tmp_path / "cold_start.jsonl").read_text() == first
    assert cold_start_source(RunConfig.model_validate({"pipeline": {"cold_start": "rows.jsonl"}}), tmp_path) == "rows.jsonl"
    bad = RunConfig.model_validate({"pipeline": {"cold_start": "synthetic:addition:many"}})
    with pytest.raises(ValueError, match="synthetic:<task>"):
        cold_start_source(bad, tmp_path)
