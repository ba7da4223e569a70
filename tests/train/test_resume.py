"""A run survives SIGKILL at any moment, and a reward that raises or hangs.

The killed runs are real processes (`kill_run.py` SIGKILLs itself at a chosen point: mid-step,
mid-checkpoint-write, mid-prune); each is resumed with `--resume` and the last segment ends with
weights bit-identical to an uninterrupted run of the same length (deterministic mode).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from r1lab.pipeline.run import run_grpo
from r1lab.train import checkpoint as ckpt

from . import survival
from .survival import raw_config, same_weights, tiny_config

KILLER = Path(__file__).with_name("kill_run.py")
SIX = {"steps": 6, "save_every": 2, "keep_last": 2}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=300)


def killed_run(point: str, config: Path, out: Path, resume: bool) -> subprocess.CompletedProcess:
    args = [sys.executable, str(KILLER), point, "train", "grpo", str(config), "--out", str(out)]
    proc = subprocess.Popen(args + (["--resume"] if resume else []), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, stdout)


def kill_and_resume(tmp_path: Path, points: list[tuple[str, str]]) -> Path:
    """Run the 6-step job through `points` (kill point, latest valid checkpoint expected after
    the kill), then finish it in-process with --resume; return the run folder."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw_config(train=SIX)))
    out = tmp_path / "run"
    for i, (point, expected) in enumerate(points):
        proc = killed_run(point, config, out, resume=i > 0)
        assert proc.returncode == -signal.SIGKILL, proc.stdout
        assert ckpt.latest_valid(out / "checkpoints").name == expected, proc.stdout
    result = run_grpo(tiny_config(train=SIX), out, console=quiet(), resume="latest")
    assert result["steps"] == 6
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step logged once, however often it was redone
    return out


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    run_grpo(tiny_config(train=SIX), out, console=quiet())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    return out


def test_sigkill_mid_step_and_mid_checkpoint_write_then_resume_gives_identical_weights(
        tmp_path, six_steps):
    out = kill_and_resume(tmp_path, [
        ("update:2", "step-2"),    # killed inside step 3
        ("manifest:4", "step-2"),  # killed writing step-4: the half-written one is ignored
    ])
    assert same_weights(six_steps / "final", out / "final")


@pytest.mark.slow
def test_sigkill_at_four_points_then_resume_gives_identical_weights(tmp_path, six_steps):
    out = kill_and_resume(tmp_path, [
        ("update:2", "step-2"),
        ("manifest:4", "step-2"),
        ("update:4", "step-4"),  # killed inside step 5
        ("prune:6", "step-6"),   # killed after step-6 landed, while deleting step-2
    ])
    assert same_weights(six_steps / "final", out / "final")


def test_a_reward_that_raises_or_hangs_costs_a_zero_score_not_the_run(tmp_path):
    flaky = survival.FLAKY = survival.Flaky()
    name = f"{survival.__name__}:flaky"
    cfg = tiny_config(
        rewards={"components": [{"name": "accuracy"}, {"name": name}], "workers": 4,
                 "timeout_s": 0.3},
        rollout={"group_size": 4}, train={"steps": 8, "batch_size": 4, "save_every": 0})
    try:
        result = run_grpo(cfg, tmp_path / "run", console=quiet())
    finally:
        flaky.release.set()
    assert result["steps"] == 8
    assert flaky.calls == 8 * 4 * 4 and (flaky.raised, flaky.hung) == (2, 1)  # ~1% each
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["reward_errors"] for m in metrics) == 3
    assert sum(m[f"rewards/errors/{name}"] for m in metrics) == 3
    assert sum(m["rewards/errors/accuracy"] for m in metrics) == 0
