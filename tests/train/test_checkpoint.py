"""Checkpoints: atomic writes, manifest checks, fallback past a broken newest one, exact resume,
SIGTERM, NaN/inf skipping, deterministic mode. All in-process on a ~30k-parameter model."""

from __future__ import annotations

import io
import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from rich.console import Console

from r1lab.pipeline.run import run_grpo
from r1lab.train import checkpoint as ckpt
from r1lab.train.grpo import GRPOTrainer, NonFiniteError
from r1lab.train.update import PolicyUpdate

from . import survival
from .survival import same_weights, tiny_config, weights


def quiet() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=300), buf


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-step run: the weights every interrupted run must end with."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    run_grpo(tiny_config(), out, console=quiet()[0])
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    return out


# ---------------------------------------------------------------- the checkpoint module
def _write_files(files: dict[str, bytes]):
    def write(tmp):
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return write


def test_write_is_atomic_verified_and_pruned(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.write_checkpoint(tmp_path, step, _write_files({ckpt.STATE: b"x" * step}), keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-3", "step-4"]
    assert ckpt.verify(tmp_path / "step-4")["step"] == 4

    def dies(tmp):  # a writer killed half way leaves only a temporary directory behind
        (tmp / ckpt.STATE).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(tmp_path, 5, dies, keep_last=2)
    assert ckpt.latest_valid(tmp_path).name == "step-4"
    assert list(tmp_path.glob(".tmp-step-5-*"))
    ckpt.write_checkpoint(tmp_path, 5, _write_files({ckpt.STATE: b"ok"}), keep_last=2)
    assert not list(tmp_path.glob(".tmp-*"))  # swept by the next save


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "delete"])
def test_damage_is_detected_and_skipped(tmp_path, damage):
    for step in (1, 2):
        ckpt.write_checkpoint(tmp_path, step, _write_files({ckpt.STATE: b"abcdefgh" * 10}))
    state = tmp_path / "step-2" / ckpt.STATE
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:7])
    elif damage == "flip":
        state.write_bytes(b"X" + state.read_bytes()[1:])
    elif damage == "no_manifest":
        (tmp_path / "step-2" / ckpt.MANIFEST).unlink()
    else:
        state.unlink()
    with pytest.raises(ckpt.CheckpointError, match="step-2"):
        ckpt.verify(tmp_path / "step-2")
    warnings: list[str] = []
    assert ckpt.latest_valid(tmp_path, warnings.append).name == "step-1"
    assert len(warnings) == 1 and "step-2" in warnings[0]
    with pytest.raises(ckpt.CheckpointError):  # an explicit path never falls back silently
        ckpt.resolve_resume(str(tmp_path / "step-2"), tmp_path)


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    torch.save(state, "/dev/null")  # plain tensors and numbers only
    a = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])


def test_trim_jsonl_drops_later_steps_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "re')
    ckpt.trim_jsonl(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------- runs
def test_deterministic_mode_same_seed_same_weights(tmp_path, reference):
    run_grpo(tiny_config(), tmp_path / "again", console=quiet()[0])
    assert same_weights(reference / "final", tmp_path / "again" / "final")
    run_grpo(tiny_config(train={"seed": 4}), tmp_path / "other", console=quiet()[0])
    assert not same_weights(reference / "final", tmp_path / "other" / "final")


def test_truncated_newest_checkpoint_falls_back_with_a_warning(tmp_path, reference):
    out = tmp_path / "run"
    run_grpo(tiny_config(), out, console=quiet()[0])
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-2", "step-4"]
    newest = out / "checkpoints" / "step-4" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn copy
    console, buf = quiet()
    result = run_grpo(tiny_config(), out, console=console, resume="latest")
    log = buf.getvalue()
    assert "warning" in log and "step-4" in log and "truncated" in log
    assert "resuming from" in log and "step-2 at step 2" in log
    assert result["steps"] == 4
    assert ckpt.verify(out / "checkpoints" / "step-4")  # rewritten whole
    assert same_weights(reference / "final", out / "final")
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 3-4 of the first run were dropped, then redone


def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, monkeypatch, reference):
    original = PolicyUpdate.__call__

    def update_then_signal(self, *args, **kwargs):
        if self.scheduler.last_epoch == 0:  # arrives in the middle of step 1
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PolicyUpdate, "__call__", update_then_signal)
    out = tmp_path / "run"
    console, buf = quiet()
    result = run_grpo(tiny_config(), out, console=console)
    assert result["stopped"] == "SIGTERM" and result["exit_code"] == 128 + signal.SIGTERM
    assert result["steps"] == 1 and "Continue with --resume" in buf.getvalue()
    assert ckpt.latest_valid(out / "checkpoints").name == "step-1"
    assert not (out / "final").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(PolicyUpdate, "__call__", original)
    run_grpo(tiny_config(), out, console=quiet()[0], resume="latest")
    assert same_weights(reference / "final", out / "final")


NAN_REWARD = {"components": [{"name": f"{survival.__name__}:nan_when_active"}]}


def test_nan_step_is_skipped_and_counted(tmp_path, monkeypatch):
    original = GRPOTrainer.step

    def step(self):  # step 2 scores NaN: its update must change no weight
        survival.NAN_STATE["active"] = self.step_count == 1
        before = {k: v.clone() for k, v in self.model.state_dict().items()}
        m = original(self)
        if self.step_count == 2:
            assert all(torch.equal(before[k], v) for k, v in self.model.state_dict().items())
        return m

    monkeypatch.setattr(GRPOTrainer, "step", step)
    out = tmp_path / "run"
    result = run_grpo(tiny_config(rewards=NAN_REWARD), out, console=quiet()[0])
    survival.NAN_STATE["active"] = False
    assert result["steps"] == 4 and result["skipped_steps"] == 1
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("skipped_updates", 0) for m in metrics] == [0, 1, 0, 0]
    assert [m["skipped_steps"] for m in metrics] == [0, 1, 1, 1]


def test_consecutive_nan_steps_stop_with_the_last_good_weights(tmp_path, monkeypatch):
    original = GRPOTrainer.step

    def step(self):  # good steps 1-2, then NaN forever
        survival.NAN_STATE["active"] = self.step_count >= 2
        return original(self)

    monkeypatch.setattr(GRPOTrainer, "step", step)
    out = tmp_path / "run"
    cfg = tiny_config(rewards=NAN_REWARD, train={"steps": 10, "max_consecutive_skips": 3})
    with pytest.raises(NonFiniteError, match=r"3 steps in a row.*max_consecutive_skips=3") as info:
        run_grpo(cfg, out, console=quiet()[0])
    survival.NAN_STATE["active"] = False
    assert "step-5" in str(info.value)
    assert same_weights(out / "checkpoints" / "step-2", out / "checkpoints" / "step-5")
    assert ckpt.verify(out / "checkpoints" / "step-5")
    assert not any(torch.isnan(w).any() for w in weights(out / "checkpoints" / "step-5").values())
