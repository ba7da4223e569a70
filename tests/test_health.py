"""Run-health alarms: each fires on a metrics stream built to trigger it (and not on its near
miss); format_only fires on a real demo run with a base too weak to add (a committed fixture);
all stay silent on the shipped demo (slow); `log.stop_on` stops a real GRPO run cleanly with a
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lab.config import LogConfig
from r1lab.health import ALARMS, HealthMonitor, logged, replay

W = 3
LOG = LogConfig(alarm_window=W)
FIXTURE_WEAK = Path(__file__).parent / "fixtures" / "demo_pretrain150_metrics.jsonl"
FIXTURE_DEMO = Path(__file__).parent / "fixtures" / "demo_metrics.jsonl"


def stream(**series: list[float]) -> list[dict]:
    n = max(len(v) for v in series.values())
    return [{"step": i + 1, **{k.replace("__", "/"): v[i] for k, v in series.items() if i < len(v)}}
            for i in range(n)]


def fired(history: list[dict], log: LogConfig = LOG, completions: int | None = None) -> list[str]:
    return [a.name for a in replay(history, log, completions=completions)]


def test_the_registry_holds_the_seven_checks():
    assert ALARMS.names() == ["entropy_collapse", "format_only", "length_blowup", "reward_errors",
                              "reward_hacking", "rollout_mismatch", "zero_signal"]


def test_entropy_collapse_below_the_floor_or_a_fraction_of_the_start():
    assert fired(stream(entropy=[0.8, 0.8, 0.8, 0.5, 0.05, 0.03])) == []  # last 3: 0.193
    assert fired(stream(entropy=[0.8, 0.8, 0.8, 0.05, 0.03, 0.02])) == ["entropy_collapse"]  # < 5% of 0.8
    assert fired(stream(entropy=[0.01, 0.01, 0.01])) == ["entropy_collapse"]  # floor 0.02
    [a] = replay(stream(entropy=[0.8, 0.8, 0.8, 0.05, 0.03, 0.02]), LOG)
    assert a.step == 6 and a.message.startswith("entropy 0.033 nats/token over the last 3 steps (first 3: 0.800)")


def test_length_blowup_when_truncation_rises_past_the_limit():
    assert fired(stream(truncated_rate=[0.3, 0.3, 0.3, 0.3, 0.3, 0.3])) == []  # high but not rising
    assert fired(stream(truncated_rate=[0.0, 0.0, 0.1, 0.2, 0.3, 0.4],
                        completion_len=[20, 30, 40, 50, 60, 64])) == ["length_blowup"]  # 0.3 >= 0.2


def test_format_only_when_format_saturates_and_accuracy_stays_flat():
    flat = stream(reward__format=[0.5, 0.7, 0.9, 1.0, 1.0, 1.0], accuracy=[0.2, 0.25, 0.2, 0.22, 0.2, 0.21])
    assert fired(flat) == ["format_only"]
    learning = stream(reward__format=[0.5, 0.7, 0.9, 1.0, 1.0, 1.0], accuracy=[0.2, 0.25, 0.3, 0.5, 0.6, 0.7])
    assert fired(learning) == []
    solved = stream(reward__format=[1.0] * 6, accuracy=[0.97] * 6)  # flat because it is solved
    assert fired(solved) == []


def test_reward_hacking_when_heldout_falls_while_training_reward_rises():
    history = stream(reward=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    history[1]["eval/pass1"], history[5]["eval/pass1"] = 0.60, 0.50
    assert fired(history) == ["reward_hacking"]
    history[5]["eval/pass1"] = 0.58  # a drop of 0.02 < heldout_drop 0.05
    assert fired(history) == []
    falling = stream(reward=[0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    falling[1]["eval/pass1"], falling[5]["eval/pass1"] = 0.60, 0.50  # both fall: not hacking
    assert fired(falling) == []


def test_reward_errors_per_completion_and_no_program_found():
    # 128 completions per step, 5 errors = 3.9% > 3%
    assert fired(stream(reward_errors=[5, 5, 5]), completions=128) == ["reward_errors"]
    assert fired(stream(reward_errors=[3, 3, 3]), completions=128) == []  # 2.3%
    code = stream(rewards__code__no_code_rate=[0.0, 0.1, 0.1], rewards__code__no_tests_rate=[0, 0, 0])
    [a] = replay(code, LOG)
    assert a.name == "reward_errors" and a.message.startswith("6.7% code: no program found")


def test_zero_signal_groups():
    assert fired(stream(zero_signal_groups=[0.9, 0.95, 1.0], accuracy=[1.0, 1.0, 1.0])) == ["zero_signal"]
    assert fired(stream(zero_signal_groups=[0.9, 0.85, 0.9])) == []  # 0.883 < 0.9
    [a] = replay(stream(zero_signal_groups=[1.0] * 3, accuracy=[0.0] * 3), LOG)
    assert "the prompts are too hard" in a.message


def test_rollout_mismatch():
    assert fired(stream(rollout__mismatch_kl=[0.001, 0.002])) == []
    assert fired(stream(rollout__mismatch_kl=[0.001, 0.05, 0.05])) == ["rollout_mismatch"]  # mean 0.034


def test_an_alarm_fires_once_per_episode_and_again_after_it_cleared():
    mon = HealthMonitor(LogConfig(alarm_window=1))
    got = [[a.name for a in mon.observe({"step": i, "zero_signal_groups": z})]
           for i, z in enumerate([1.0, 1.0, 0.2, 1.0], 1)]
    assert got == [["zero_signal"], [], [], ["zero_signal"]]


def test_thresholds_are_config():
    hist = stream(zero_signal_groups=[0.6, 0.6, 0.6])
    assert fired(hist) == [] and fired(hist, LogConfig(alarm_window=W, zero_signal_max=0.5)) == ["zero_signal"]


def test_format_only_fires_on_a_real_demo_run_whose_base_cannot_add():
    """A real `r1lab demo` whose pre-training was cut to 150 steps (fixture: its 60 GRPO steps'
    metrics.jsonl, as logged; `--set pretrain.steps=150 eval.num_problems=40 eval.k=2`): the base
    almost never answers right, so GRPO can only raise the format reward (0.51 -> ~0.93) while
    accuracy stays at ~0; `format_only` fires, and no other alarm does. The run itself, with the
    earlier default format_saturation of 0.95, logged it only at step 53 (RunLogger wrote it
    into that record); with the default 0.9 it fires at step 28."""
    history = [json.loads(line) for line in FIXTURE_WEAK.read_text().splitlines()]
    assert len(history) == 60 and max(m["accuracy"] for m in history) <= 0.05
    assert history[0]["reward/format"] < 0.6 < 0.9 <= sum(m["reward/format"] for m in history[-5:]) / 5
    alarms = replay(history, LogConfig(), completions=16 * 8)
    assert {a.name for a in alarms} == {"format_only"} and alarms[0].step == 28
    assert [(a.name, a.step) for a in logged(history)] == [("format_only", 53)]
    assert logged(history)[0].message.startswith("reward/format is 0.95 over the last 5 steps")
    assert alarms[0].message.endswith("the policy learnt the format, not the task; lower the "
                                      "format weight or check the accuracy reward on a few samples")


def test_every_alarm_is_silent_on_the_shipped_demo_fixture():
    """`r1lab demo --out runs/d --set log.progress=false` (the shipped config, seed 1; 170 s at
    load ~2, 22:04 UTC): its 60 GRPO steps' metrics.jsonl. Held-out pass@1 0.47 -> 0.96; entropy
    falls 0.13 -> 0.01 nats while training accuracy reaches ~0.94 (converged: entropy_collapse
    stays silent because accuracy >= log.solved_accuracy; it logged one at step 41 under the
    rule without that condition)."""
    history = [json.loads(line) for line in FIXTURE_DEMO.read_text().splitlines()]
    assert len(history) == 60 and history[-1]["think_rate"] > history[0]["think_rate"]
    assert replay(history, LogConfig(), completions=16 * 8) == []
    # the same stream with accuracy held at the start's level: the collapse is reported (and,
    # with the format reward saturated, format-only learning too)
    unsolved = [{**m, "accuracy": history[0]["accuracy"]} for m in history]
    assert {a.name for a in replay(unsolved, LogConfig(), completions=16 * 8)} == {
        "entropy_collapse", "format_only"}


@pytest.mark.slow
def test_every_alarm_is_silent_on_the_shipped_demo(tmp_path: Path):
    """The shipped demo (`r1lab demo`, ~70 s on 2 idle cores): no alarm is logged during its
    GRPO phase, and replaying its metrics with the default thresholds finds none."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "r1lab.cli", "demo", "--out", str(tmp_path / "run"),
                          "--set", "log.progress=false"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 60 and logged(history) == []
    assert replay(history, LogConfig(), completions=16 * 8) == []


def test_stop_on_ends_a_real_grpo_run_with_a_checkpoint(tmp_path: Path):
    from r1lab.config import RunConfig
    from r1lab.pipeline.run import run_grpo

    cfg = RunConfig.model_validate({
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                           "intermediate_size": 64, "max_position_embeddings": 128}},
        "data": {"train_size": 16, "heldout_size": 4},
        "rollout": {"group_size": 2, "max_new_tokens": 6},
        "train": {"steps": 6, "batch_size": 2, "micro_batch_size": 4},
        "eval": {"num_problems": 2, "k": 1, "temperatures": [1.0], "greedy": False},
        # an untrained model's entropy is ~log(vocab) nats: a floor of 100 makes it collapse at once
        "log": {"progress": False, "alarm_window": 2, "entropy_floor": 100.0, "stop_on": ["entropy_collapse"]},
    })
    result = run_grpo(cfg, tmp_path)
    assert result["steps"] == 2 and result["exit_code"] == 3
    assert result["stopped"].startswith("alarm entropy_collapse at step 2 (log.stop_on)")
    assert Path(result["checkpoint"]).name == "step-2"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["alarm/entropy_collapse"] == 1
    assert "alarm/entropy_collapse" not in lines[0]


@pytest.mark.parametrize("name", ALARMS.names())
def test_each_check_is_silent_without_its_keys(name: str):
    assert ALARMS.get(name)(stream(loss=[1.0] * 12, grad_norm=[0.5] * 12), LOG) is None
