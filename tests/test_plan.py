"""`r1lab plan`: every shipped config plans; batch arithmetic against hand-computed values;
settings with no effect are listed; `train grpo --plan` prints the plan and trains nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1lab.cli import app
from r1lab.config import load_config
from r1lab.pipeline.demo import default_config_path
from r1lab.plan import build_plan, llama_params

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + [default_config_path()]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_plan_runs_on_every_shipped_config(path: Path):
    result = CliRunner().invoke(app, ["plan", str(path), "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert "optimizer steps per rollout" in result.output
    assert "settings with no effect here" in result.output


def test_dapo_on_8_processes_hand_computed():
    # 512 prompts x G=16 = 8192 completions per rollout; mini-batches of 512 -> 16 optimiser
    # steps (32 prompts each); 8 ranks own 512/8 = 64 groups = 1024 completions each, and
    # 512/8 = 64 completions per optimiser step = 8 micro-batches of 8; 11 rollout rounds at most
    # (dynamic sampling, max_refill_rounds 10)
    b = build_plan(load_config(ROOT / "configs/dapo.yaml"), "grpo", nproc=8).batch
    assert (b["prompts_per_rollout"], b["completions_per_rollout"]) == (512, 8192)
    assert (b["completions_per_optimizer_step"], b["prompts_per_optimizer_step"]) == (512, 32)
    assert b["optimizer_steps_per_rollout"] == 16 and b["off_policy"].startswith("off-policy: 16")
    assert (b["prompts_per_rollout_per_process"], b["completions_per_rollout_per_process"]) == (64, 1024)
    assert b["completions_per_optimizer_step_per_process"] == 64
    assert b["micro_batches_per_optimizer_step_per_process"] == 8
    cfg = load_config(ROOT / "configs/dapo.yaml")
    assert b["rollout_rounds_max"] == 1 + cfg.algorithm.max_refill_rounds
    assert b["completion_tokens_per_optimizer_step_max"] == 512 * cfg.rollout.max_new_tokens


def test_demo_on_one_process_hand_computed_and_memory_parts():
    # 16 prompts x G=8 = 128 completions, one optimiser step on all of them: on-policy
    cfg = load_config(default_config_path())
    plan = build_plan(cfg, "grpo", nproc=1)
    b = plan.batch
    assert (b["completions_per_rollout"], b["completions_per_optimizer_step"]) == (128, 128)
    assert b["optimizer_steps_per_rollout"] == 1 and b["off_policy"].startswith("on-policy")
    assert b["completions_per_rollout_per_process"] == 128
    assert b["optimizer_steps_total"] == 60
    assert plan.reference.startswith("no reference model")
    # the demo's 0.67M-parameter tiny Llama (README), float32: 4 bytes per weight, per grad,
    # and 2 x 4 for AdamW's two moments
    P = plan.model["params"]
    assert P == llama_params(128, 4, 4, 4, 256, 103, True) == 669_696
    assert plan.memory["weights"] == plan.memory["gradients"] == 4 * P
    assert plan.memory["optimizer_state"] == 8 * P
    seq = b["prompt_tokens_max"] + 96
    assert plan.memory["kv_cache"] == 128 * seq * 4 * 2 * 128 * 4  # rows x seq x layers x K,V x kv dim x bytes
    names = {(k, n) for k, n, _ in plan.functions}
    assert {("advantage", "grpo"), ("loss", "clip"), ("reward", "accuracy"), ("reward", "format")} <= names


def test_the_papers_grpo_loads_a_reference_and_steps_16_times_per_rollout():
    plan = build_plan(load_config(ROOT / "configs/grpo_paper.yaml"), "grpo", nproc=1)
    assert plan.batch["completions_per_rollout"] == 8192  # "8,192 outputs per rollout"
    assert plan.batch["optimizer_steps_per_rollout"] == 16  # "16 mini-batches of 512"
    assert plan.reference.startswith("a frozen reference copy") and ("kl", "k3") in {
        (k, n) for k, n, _ in plan.functions}


def test_settings_with_no_effect_are_listed():
    cfg = load_config(default_config_path(), ["algorithm.kl_estimator=k1", "algorithm.eps_high=0.28",
                                               "algorithm.mini_batch_size=4096"])
    found = build_plan(cfg, "grpo").no_effect
    assert any(x.startswith("algorithm.kl_estimator: algorithm.beta is 0") for x in found), found
    assert any(x.startswith("algorithm.eps_high: one optimiser step per rollout batch") for x in found)
    assert any(x.startswith("algorithm.mini_batch_size=4096: >= the 128 completions") for x in found)
    # with two optimiser steps per rollout batch the clip acts: eps_high is no longer listed
    cfg2 = load_config(default_config_path(), ["algorithm.eps_high=0.28", "algorithm.mini_batch_size=64"])
    assert not any("eps_high" in x for x in build_plan(cfg2, "grpo").no_effect)


def test_train_grpo_plan_prints_and_trains_nothing(tmp_path: Path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "grpo", str(default_config_path()), "--plan",
                                      "--nproc", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "(4 processes)" in result.output and not out.exists()
    bad = CliRunner().invoke(app, ["plan", str(default_config_path()), "--set", "train.batch_size=0"])
    assert bad.exit_code == 2 and "train.batch_size" in bad.output
