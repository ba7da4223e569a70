"""RunLogger: metrics.jsonl plus tracker sinks read back with each tracker's own reader, health
alarms written into the record, log.stop_on, and SFT logging through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lab.config import RunConfig
from r1lab.tracking import RunLogger, scalars, tracker_name
from r1lab.train.distributed import World

RECORDS = [
    {"step": 1, "reward": 0.25, "reward/accuracy": 0.125, "completion_len": 20.0, "lr": 1e-4,
     "truncated_rate": 0.0, "alarms_note": "text is not a scalar"},
    {"step": 2, "reward": 0.75, "reward/accuracy": 0.5, "completion_len": 31.5, "lr": 1e-4,
     "truncated_rate": 0.0625},
]


def _cfg(**log) -> RunConfig:
    return RunConfig.model_validate({"log": {"progress": False, **log}})


def test_tracker_names_follow_trl_where_they_measure_the_same_thing():
    assert tracker_name("truncated_rate") == "completions/clipped_ratio"
    assert tracker_name("zero_signal_groups") == "frac_reward_zero_std"
    assert tracker_name("clip_frac_high") == "clip_ratio/high_mean"
    assert tracker_name("reward/format") == "rewards/format/mean"
    assert tracker_name("rewards/accuracy/no_answer_rate") == "rewards/accuracy/no_answer_rate"
    assert scalars({"step": 1, "x": float("nan"), "y": 2, "z": [1]}) == {"y": 2.0}


def test_tensorboard_event_file_loads_in_tensorboards_reader_with_the_logged_scalars(tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(_cfg(report_to=["tensorboard"]), tmp_path) as logger:
        for r in RECORDS:
            logger.log_metrics(dict(r))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"reward", "rewards/accuracy/mean", "completions/mean_length", "learning_rate",
            "completions/clipped_ratio"} <= set(tags)
    assert [(e.step, e.value) for e in acc.Scalars("reward")] == [(1, 0.25), (2, 0.75)]
    assert [e.value for e in acc.Scalars("completions/mean_length")] == [20.0, 31.5]
    assert [e.value for e in acc.Scalars("completions/clipped_ratio")] == [0.0, 0.0625]
    # the jsonl keeps r1lab's names, one line per step
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["completion_len"] for x in lines] == [20.0, 31.5]


def _wandb_records(path: Path):
    """The protobuf records of a .wandb transaction log (LevelDB log format: 32 KiB blocks of
    crc32c(4) length(2) type(1) chunks after a 7-byte W&B header), parsed by wandb's own
    `Record` message."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def test_wandb_offline_run_holds_the_logged_scalars(tmp_path: Path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default must be offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    with RunLogger(_cfg(report_to=["wandb"], project="r1lab-test"), tmp_path) as logger:
        for r in RECORDS:
            logger.log_metrics(dict(r))
    [run_file] = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
               for rec in _wandb_records(run_file) if rec.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["reward"], h["completions/mean_length"]) for h in history] == [
        (1, 0.25, 20.0), (2, 0.75, 31.5)]


def test_trackio_local_store_holds_the_logged_scalars(tmp_path: Path, monkeypatch):
    pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    with RunLogger(_cfg(report_to=["trackio"], project="r1lab-test", run_name="t1"), tmp_path) as lg:
        for r in RECORDS:
            lg.log_metrics(dict(r))
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("r1lab-test", "t1")
    assert [(x["step"], x["reward"], x["completions/clipped_ratio"]) for x in logs] == [
        (1, 0.25, 0.0), (2, 0.75, 0.0625)]


def test_mlflow_file_store_holds_the_logged_scalars(tmp_path: Path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    with RunLogger(_cfg(report_to=["mlflow"], project="r1lab-test", run_name="m1"), tmp_path) as lg:
        for r in RECORDS:
            lg.log_metrics(dict(r))
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("r1lab-test").experiment_id])
    assert run.info.run_name == "m1" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "completions/mean_length")
    assert [(m.step, m.value) for m in history] == [(1, 20.0), (2, 31.5)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "reward")] == [0.25, 0.75]


def test_unavailable_tracker_is_a_clear_error_naming_the_extra(tmp_path: Path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    with pytest.raises(ImportError, match=r"log.report_to: mlflow needs the mlflow package .*r1lab\[mlflow\]"):
        RunLogger(_cfg(report_to=["mlflow"]), tmp_path)


def test_only_the_main_rank_writes_but_every_rank_runs_the_checks(tmp_path: Path):
    cfg = _cfg(alarm_window=2)
    loggers = [RunLogger(cfg, tmp_path / f"r{r}", world=World(r, 2)) for r in range(2)]
    for step, z in enumerate([0.5, 1.0, 1.0], 1):
        for lg in loggers:
            lg.log_metrics({"step": step, "zero_signal_groups": z})
    for lg in loggers:
        lg.close()
        assert [(a.name, a.step) for a in lg.alarms] == [("zero_signal", 3)]
    assert not (tmp_path / "r1" / "metrics.jsonl").exists()
    lines = [json.loads(x) for x in (tmp_path / "r0" / "metrics.jsonl").read_text().splitlines()]
    assert [x.get("alarm/zero_signal") for x in lines] == [None, None, 1]
    assert lines[2]["alarms"][0].startswith("zero_signal: 100% of groups had all-equal rewards")


def _stop_on_two_ranks(world: World, run_dir: str):
    """Rank 0 alone holds the held-out eval (as in the GRPO loop), whose fall trips
    reward_hacking; both ranks must stop at that step."""
    cfg = _cfg(alarm_window=1, stop_on=["reward_hacking"])
    with RunLogger(cfg, Path(run_dir) / f"r{world.rank}", world=world) as lg:
        for step, reward in enumerate([0.2, 0.5, 0.8, 0.9], 1):
            m = {"step": step, "reward": reward}
            if world.is_main and step in (1, 3):
                m["eval/pass1"] = 0.6 if step == 1 else 0.4
            lg.log_metrics(m)
            if lg.stop_reason:
                return step, lg.stop_reason
    return None


@pytest.mark.distributed
def test_stop_on_is_taken_by_every_rank_at_the_same_step(tmp_path: Path):
    from tests.train.dist_helpers import run_ranks

    results = run_ranks(_stop_on_two_ranks, 2, str(tmp_path))
    for r in results:
        assert not isinstance(r, Exception), r
    assert [r[0] for r in results] == [3, 3]
    assert results[0][1] == results[1][1]
    assert results[0][1].startswith("alarm reward_hacking at step 3 (log.stop_on): held-out pass@1 fell 0.600 -> 0.400")


def test_alarm_not_in_stop_on_is_logged_but_does_not_stop(tmp_path: Path, capsys):
    with RunLogger(_cfg(alarm_window=1), tmp_path) as lg:
        lg.log_metrics({"step": 1, "entropy": 0.001})
    assert lg.stop_reason is None and [a.name for a in lg.alarms] == ["entropy_collapse"]
    assert "alarm entropy_collapse at step 1" in capsys.readouterr().err


def test_stop_on_names_are_checked():
    with pytest.raises(ValueError, match="stop_on: unknown alarm entropy; valid: all, entropy_collapse"):
        _cfg(stop_on=["entropy"])


def test_sft_logs_through_runlogger_to_tensorboard_and_stops_when_asked(tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from r1lab.config import TinyModelConfig
    from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
    from r1lab.train.sft import train_sft

    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                             num_kv_heads=2, intermediate_size=64), tok, seed=0)
    pairs = [("1+2=", "<answer>3</answer>"), ("2+2=", "<answer>4</answer>")]
    with RunLogger(_cfg(report_to=["tensorboard"]), tmp_path) as lg:
        losses = train_sft(model, tok, pairs, steps=3, batch_size=2, lr=1e-3, warmup_steps=0,
                           logger=lg, progress=False)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx(losses, rel=1e-6)

    class StopAfterTwo(RunLogger):
        def log_metrics(self, metrics):
            super().log_metrics(metrics)
            if metrics["step"] == 2:
                self.stop_reason = "test"

    with StopAfterTwo(_cfg(), tmp_path / "stop") as lg:
        assert len(train_sft(model, tok, pairs, steps=5, batch_size=2, logger=lg, progress=False)) == 2
