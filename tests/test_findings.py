"""`r1lab demo --scenario ...`: the paper's findings in miniature (`r1lab.pipeline.findings`).

The default suite runs the reflection scenario end to end on a micro config (seconds) and checks
the report's data; `-m slow` runs each scenario's real config on seed 1 and asserts the
direction of its finding.
"""

from __future__ import annotations

import json

import pytest

from r1lab.analysis.report import read_jsonl
from r1lab.pipeline.demo import load_demo_config, run_demo
from r1lab.pipeline.findings import SCENARIOS, behaviour

MICRO = [
    "model.tiny={hidden_size: 32, num_layers: 2, num_heads: 2, num_kv_heads: 2, intermediate_size: 64}",
    "model.threads=1", "data.min_digits=1", "data.max_digits=2", "data.train_size=64",
    "data.heldout_size=8", "pretrain.steps=120", "pretrain.corpus_size=2000", "pretrain.batch_size=32",
    "pretrain.reflect_fraction=0.5", "train.steps=6", "train.batch_size=4", "rollout.max_new_tokens=48",
    "eval.num_problems=8", "eval.k=2", "log.progress=false",
]


def test_scenarios_are_registered_and_the_cli_names_them():
    assert {"reflection", "language"} <= set(SCENARIOS.names())
    with pytest.raises(ValueError, match="unknown scenario 'aha'.*reflection"):
        load_demo_config(scenario="aha")
    assert load_demo_config(scenario="language").scenario.name == "language"


def test_behaviour_counts_by_hand():
    pairs = [({"answer": "12"}, "<think>5+7=12,check</think><answer>12</answer>"),
             ({"answer": "12"}, "<think>5+7=13,wait,5+7=12,check</think><answer>12</answer>"),
             ({"answer": "12"}, "<think>5+7=13</think><answer>13</answer>"),
             ({"answer": "12"}, "<think>5+7=12;f+h=bc</think><answer>12</answer> extra")]
    b = behaviour(pairs)
    assert b["pass1"] == 0.75 and b["reflection_rate"] == 0.5 and b["caught_slip_rate"] == 0.25
    assert b["accuracy_reflective"] == 1.0 and b["accuracy_plain"] == 0.5
    # "check" and "wait" are Latin words among digits too: 3 of 4 mix scripts
    assert b["mixing_rate"] == 0.75 and b["format_error_rate"] == 0.25
    assert b["mean_reasoning_len"] == (12 + 24 + 6 + 13) / 4


def test_reflection_scenario_report_has_a_non_flat_reflection_curve(tmp_path):
    cfg = load_demo_config(scenario="reflection", overrides=MICRO)
    summary = run_demo(cfg, tmp_path, seed=1)
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    curve = [m["reward/reflection"] for m in metrics]  # what the report's reflection panel draws
    assert len(curve) == 6 and summary["reflection_curve"] == curve
    assert max(curve) > min(curve)  # not flat at 0 as in the plain demo
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("base_pass1", "rl_pass1", "base_reflection_rate", "rl_reflection_rate", "aha_step"):
        assert key in saved
    page = (tmp_path / "report.html").read_text()
    assert "Reflection aha step" in page


@pytest.mark.slow
def test_reflection_finding_on_seed_1(tmp_path):
    s = run_demo(load_demo_config(scenario="reflection", overrides=["log.progress=false"]), tmp_path, seed=1)
    assert s["rl_reflection_rate"] > s["base_reflection_rate"]
    assert s["rl_pass1"] > s["base_pass1"]
    assert s["rl"]["accuracy_reflective"] > s["rl"]["accuracy_plain"]


@pytest.mark.slow
def test_language_finding_on_seed_1(tmp_path):
    s = run_demo(load_demo_config(scenario="language", overrides=["log.progress=false"]), tmp_path, seed=1)
    assert s["lc_mixing_rate"] < s["r1zero_mixing_rate"]


def assert_readability_finding(s):
    """R1 (cold start first) is more readable than R1-Zero at similar accuracy: it mixes at most
    half as often, its format is no worse, and its pass@1 is within 0.03 of R1-Zero's."""
    assert s["r1_mixing_rate"] <= 0.5 * s["r1zero_mixing_rate"]
    assert s["r1_format_error_rate"] <= s["r1zero_format_error_rate"] + 0.01
    assert s["r1_pass1"] >= s["r1zero_pass1"] - 0.03


def assert_distillation_finding(s):
    """For the smaller student, SFT on the larger teacher's filtered samples beats R1-Zero RL on
    the student itself, at equal steps and at equal compute."""
    assert s["student_params"] < s["teacher_params"]
    assert s["distill_equal_steps_pass1"] > s["rl_pass1"]
    assert s["distill_equal_compute_pass1"] > s["rl_pass1"]


@pytest.mark.slow  # ~10 min on one core: the language base, R1-Zero and the four stages
def test_readability_finding_on_seed_1(tmp_path):
    cfg = load_demo_config(scenario="readability", overrides=["log.progress=false", "model.threads=1"])
    assert_readability_finding(run_demo(cfg, tmp_path, seed=1))


@pytest.mark.slow  # minutes on one core: teacher and student pre-training, two RL runs, two SFTs
def test_distillation_finding_on_seed_1(tmp_path):
    cfg = load_demo_config(scenario="distillation", overrides=["log.progress=false", "model.threads=1"])
    assert_distillation_finding(run_demo(cfg, tmp_path, seed=1))


@pytest.mark.slow  # ~10 s of CPU: a pre-training, R1-Zero and the four stages, micro-sized
def test_readability_scenario_runs_r1zero_and_the_four_stages(tmp_path):
    overrides = [o for o in MICRO if not o.startswith("pretrain.reflect")] + [
        "pipeline.overrides={cold_start: [sft.steps=4], rejection_sft: [sft.steps=4]}",
        "reject.num_prompts=8", "reject.min_scores={format: 0.0}", "eval.greedy=false",
        "eval.temperatures=[1.0]"]
    s = run_demo(load_demo_config(scenario="readability", overrides=overrides), tmp_path, seed=1)
    stages = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert list(stages) == ["cold_start", "reasoning_rl", "rejection_sampling", "rejection_sft",
                            "all_scenario_rl"]
    for name in ("r1zero", "r1"):
        for k in ("pass1", "mixing_rate", "format_error_rate", "mean_reasoning_len"):
            assert s[f"{name}_{k}"] == s[name][k] and s[name]["n"] == 8 * 2


@pytest.mark.slow  # ~10 s of CPU: two pre-trainings, two RL runs, two SFTs, micro-sized
def test_distillation_scenario_compares_at_equal_steps_and_compute(tmp_path):
    overrides = [o for o in MICRO if not o.startswith("pretrain.reflect")] + [
        "scenario.teacher_tiny={hidden_size: 48, num_layers: 2, num_heads: 2, num_kv_heads: 2, intermediate_size: 96}",
        "reject.num_prompts=16", "reject.min_scores={format: 0.0}", "sft.batch_size=8"]
    s = run_demo(load_demo_config(scenario="distillation", overrides=overrides), tmp_path, seed=1)
    assert s["student_params"] < s["teacher_params"] and s["sft_steps"]["equal_steps"] == 6
    assert s["teacher_samples"] == 16  # every sample passes a 0 threshold: one kept per prompt
    for name in ("teacher", "student_base", "rl", "distill_equal_steps", "distill_equal_compute"):
        assert 0.0 <= s[f"{name}_pass1"] <= 1.0 and s[name]["n"] == 8 * 2
