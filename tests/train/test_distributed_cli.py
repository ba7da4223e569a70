"""`torchrun --nproc_per_node 2 -m r1lab train grpo` against `python -m r1lab train grpo`: the
same run (real processes over gloo, the tiny model), one metrics line per step, rank 0 writes;
a rank killed with SIGKILL stops the run, and --resume (with 2 ranks, or with 1) ends where the
uninterrupted run does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.train.dist_helpers import free_port
from tests.train.survival import raw_config, weights

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def config(tmp: Path) -> Path:
    raw = raw_config(data={"train_size": 8, "heldout_size": 2},
                     train={"steps": STEPS, "batch_size": 4, "save_every": 2})
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(args: list[str], nproc: int = 1, script: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, *(script or ["-m", "r1lab"]), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), *(script or ["-m", "r1lab"]), *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def cli_config(tmp: Path, name: str, algorithm: dict | None = None, **train_opts) -> Path:
    """The 4-step tiny `train grpo` config of the strategy tests (FSDP2, ZeRO), as a file.
    packed: false on every side: sharded updates take the padded forward (the packed one reads
    whole weights), so the 1-process run takes it too and the paths compare like for like."""
    raw = raw_config(data={"train_size": 8, "heldout_size": 2},
                     train={"steps": 4, "batch_size": 4, "save_every": 2, "packed": False,
                            **train_opts}, **({"algorithm": algorithm} if algorithm else {}))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def far_fraction(a: Path, b: Path, tol: float = 1e-6) -> float:
    """Share of weights more than `tol` apart. With Adam at lr 0.01 a near-zero gradient's
    summation-order noise moves a few elements by ~1e-5 (measured on Zen 5: 9 to 28 of 23,936,
    0.04-0.12%, over DDP and ZeRO-2/3); a real error (normaliser, reduction, stale weights) moves
    most of them. The tests bound it at 1%."""
    wa, wb = weights(a), weights(b)
    far = sum(int(((wa[k] - wb[k]).abs() > tol).sum()) for k in wa)
    return far / sum(v.numel() for v in wa.values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    cfg = config(tmp)
    one = run(["train", "grpo", str(cfg), "--out", str(tmp / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(["train", "grpo", str(cfg), "--out", str(tmp / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp, cfg, two


def test_torchrun_two_ranks_match_one_process(runs):
    tmp, _, two = runs
    assert two.stdout.count("GRPO finished") == 1  # rank 1 prints nothing
    assert steps_logged(tmp / "two") == list(range(1, STEPS + 1))  # one line per step
    assert max_diff(tmp / "one" / "final", tmp / "two" / "final") < 1e-4
    assert far_fraction(tmp / "one" / "final", tmp / "two" / "final") < 0.01
    start = weights(tmp / "two" / "checkpoints" / "step-2")
    assert max((start[k] - weights(tmp / "two" / "final")[k]).abs().max() for k in start) > 1e-3
    one = [json.loads(x) for x in (tmp / "one" / "metrics.jsonl").read_text().splitlines()]
    two_m = [json.loads(x) for x in (tmp / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in two_m] == pytest.approx([m["loss"] for m in one], abs=1e-5)
    assert [m["reward"] for m in two_m] == [m["reward"] for m in one]  # the same completions
    assert all(m["memory/peak_rss_mb"] > 0 for m in two_m)
    # the strategy each ran under, recorded once with the run (and said on rank 0's console)
    assert (one[0]["distributed/strategy"], one[0]["distributed/world_size"]) == ("none", 1)
    assert (two_m[0]["distributed/strategy"], two_m[0]["distributed/world_size"]) == ("ddp", 2)
    assert "distributed/strategy" not in two_m[1]
    assert "2 processes: train.strategy auto -> ddp" in two.stdout


def test_killed_rank_stops_the_run_and_resume_ends_equal(runs):
    tmp, cfg, _ = runs
    out = tmp / "killed"
    script = ["tests/train/dist_kill_run.py", "1", "update:3"]  # rank 1 dies in step 4
    killed = run(["train", "grpo", str(cfg), "--out", str(out)], nproc=2, script=script)
    assert killed.returncode != 0  # the run stopped (torchrun reports the dead rank)
    assert not (out / "final").exists()
    assert (out / "checkpoints" / "step-2").is_dir()
    copy = tmp / "killed_copy"
    shutil.copytree(out, copy)
    again = run(["train", "grpo", str(cfg), "--out", str(out), "--resume"], nproc=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert steps_logged(out) == list(range(1, STEPS + 1))
    assert max_diff(tmp / "two" / "final", out / "final") < 1e-6
    # a different world size: the 2-rank checkpoint resumed by 1 process ends equal too
    alone = run(["train", "grpo", str(cfg), "--out", str(copy), "--resume"])
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert max_diff(tmp / "one" / "final", copy / "final") < 1e-4


def test_commands_that_are_not_data_parallel_run_once_on_rank_0(tmp_path):
    raw = raw_config(data={"train_size": 6, "heldout_size": 2},
                     reject={"samples_per_prompt": 2, "num_prompts": 4, "min_scores": {}})
    cfg = tmp_path / "sample.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    one = run(["sample", str(cfg), "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(["sample", str(cfg), "--out", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1: this command is not data-parallel; it runs on rank 0 alone" in two.stderr
    for name in ("samples.jsonl", "sft.jsonl"):  # the same rows, written once
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert len((tmp_path / "two" / "samples.jsonl").read_text().splitlines()) == 8
