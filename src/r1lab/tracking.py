"""Where a run's metrics go: `metrics.jsonl` and `samples.jsonl` in the run folder, and, as
sinks of the same records, the experiment trackers of `log.report_to` (TensorBoard, wandb,
trackio, MLflow), each through its own library (an optional extra: `pip install 'r1lab[wandb]'`).

Only the main process writes: in a multi-process run the other ranks' loggers are silent, so
the files hold one line per step whatever the world size. The run-health alarms
(`r1lab.health`) run on every rank; with `log.stop_on` in a multi-process run rank 0's stop
decision (rank 0 also holds the held-out eval metrics) is broadcast each step, so every rank
stops at the same step. Only the main rank prints and logs alarms.

Trackers get the numeric scalars of each record under TRL's names where r1lab measures the same
thing (`tracker_name`), so a dashboard built for TRL's GRPOTrainer reads an r1lab run; the jsonl
keeps r1lab's names. Every tracker runs offline by default: TensorBoard event files in
`RUN/tensorboard`, wandb in offline mode under `RUN/wandb` (set `WANDB_MODE=online` to sync),
trackio's local store in `RUN/trackio`, an MLflow file store in `RUN/mlruns`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from r1lab.health import Alarm, HealthMonitor, stops
from r1lab.train.common import JsonlWriter
from r1lab.train.distributed import World

#: r1lab metric -> TRL GRPOTrainer's name for the same quantity
TRL_NAMES = {
    "completion_len": "completions/mean_length",
    "truncated_rate": "completions/clipped_ratio",
    "zero_signal_groups": "frac_reward_zero_std",
    "lr": "learning_rate",
    "clip_frac": "clip_ratio/region_mean",
    "clip_frac_low": "clip_ratio/low_mean",
    "clip_frac_high": "clip_ratio/high_mean",
}
_COMPONENT = re.compile(r"^reward/([^/]+)$")


def tracker_name(key: str) -> str:
    """The name a tracker shows for an r1lab metric: TRL's where it measures the same thing.

    >>> tracker_name("completion_len"), tracker_name("reward/accuracy"), tracker_name("kl")
    ('completions/mean_length', 'rewards/accuracy/mean', 'kl')
    """
    if key in TRL_NAMES:
        return TRL_NAMES[key]
    m = _COMPONENT.match(key)
    return f"rewards/{m.group(1)}/mean" if m else key


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numeric values of a metrics record under tracker names (no `step`, no lists).

    >>> scalars({"step": 3, "reward": 0.5, "truncated_rate": 0.0, "alarms": ["x"], "ok": True})
    {'reward': 0.5, 'completions/clipped_ratio': 0.0}
    """
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[tracker_name(k)] = float(v)
    return out


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"log.report_to: {extra} needs the {module.split('.')[0]} package "
                          f"(pip install 'r1lab[{extra}]')") from None


class TensorBoardTracker:
    """Event files in RUN/tensorboard, written by TensorBoard's own `SummaryWriter`."""

    def __init__(self, run_dir: Path, name: str, project: str, config: dict[str, Any]) -> None:
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + _yaml(config) + "\n```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A wandb run under RUN/wandb, offline unless WANDB_MODE says otherwise."""

    def __init__(self, run_dir: Path, name: str, project: str, config: dict[str, Any]) -> None:
        wandb = _need("wandb", "wandb")
        self.run = wandb.init(project=project, name=name, dir=str(run_dir), config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """trackio's local store, in RUN/trackio (TRACKIO_DIR)."""

    def __init__(self, run_dir: Path, name: str, project: str, config: dict[str, Any]) -> None:
        os.environ.setdefault("TRACKIO_DIR", str(run_dir / "trackio"))
        self.trackio = _need("trackio", "trackio")
        self.run = self.trackio.init(project=project, name=name, config=config, embed=False,
                                     auto_log_cpu=False, auto_log_gpu=False)

    def log(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


class MlflowTracker:
    """An MLflow run in a file store at RUN/mlruns (through `MlflowClient`: no global state)."""

    def __init__(self, run_dir: Path, name: str, project: str, config: dict[str, Any]) -> None:
        # a plain file store: offline, no database packages (MLflow 3 asks to opt in to it)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _need("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
        exp = self.client.get_experiment_by_name(project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(project)
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        for k, v in _flat(config).items():
            self.client.log_param(self.run_id, k, str(v)[:500])

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow keys allow only [A-Za-z0-9_-./ ]
        metrics = [Metric(re.sub(r"[^\w\-./ ]", "_", k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS: dict[str, type] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                             "trackio": TrackioTracker, "mlflow": MlflowTracker}


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict flattened to dotted keys.

    >>> _flat({"a": {"b": 1}, "c": 2})
    {'a.b': 1, 'c': 2}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _log_config(cfg: Any):
    from r1lab.config import LogConfig

    return getattr(cfg, "log", None) or LogConfig()


class RunLogger:
    """`log_metrics` once per step, `log_samples` for the step's sample transcripts.

    Each record goes to metrics.jsonl and every `log.report_to` tracker (main rank only) after
    the health checks have run over it: an alarm that starts firing is printed and written into
    the record (`alarm/<name>: 1`, `alarms: ["<name>: message"]`). `stop_reason` is set when an
    alarm of `log.stop_on` fires (the trainer then checkpoints and returns, as on SIGTERM)."""

    def __init__(self, cfg: Any, run_dir: str | Path, world: World | None = None,
                 console: Console | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.world = world or World.current()
        self.log_cfg = _log_config(cfg)
        self.console = console or Console(stderr=True)
        self.stop_reason: str | None = None
        self._metrics = self._samples = None
        self.trackers: list[Tracker] = []
        completions = None
        with_batch = getattr(cfg, "train", None) is not None and getattr(cfg, "rollout", None) is not None
        if with_batch:
            completions = cfg.train.batch_size * cfg.rollout.group_size
        self.health = HealthMonitor(self.log_cfg, completions=completions) if self.log_cfg.alarms else None
        if self.world.is_main:
            self._metrics = JsonlWriter(self.run_dir / "metrics.jsonl")
            self._samples = JsonlWriter(self.run_dir / "samples.jsonl")
            name = self.log_cfg.run_name or self.run_dir.resolve().name
            config = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else {}
            try:
                for tracker in self.log_cfg.report_to:
                    self.trackers.append(TRACKERS[tracker](self.run_dir, name, self.log_cfg.project, config))
            except BaseException:
                self.close()
                raise

    @property
    def alarms(self) -> list[Alarm]:
        """Every alarm fired so far."""
        return self.health.fired if self.health else []

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Check, then write one step's record (the alarm keys are added to `metrics` itself)."""
        fired = self.health.observe(metrics) if self.health else []
        if fired:
            metrics.update({f"alarm/{a.name}": 1 for a in fired})
            metrics["alarms"] = [*metrics.get("alarms", []), *(str(a) for a in fired)]
        for a in fired:
            if self.world.is_main:
                self.console.print(f"[bold red]alarm[/] [bold]{a.name}[/] at step {a.step}: "
                                   f"{a.message}", highlight=False)
            if self.stop_reason is None and stops(self.log_cfg, a):
                self.stop_reason = f"alarm {a.name} at step {a.step} (log.stop_on): {a.message}"
        if self.world.size > 1 and self.log_cfg.stop_on:
            # only rank 0 has every metric (held-out eval runs there): its decision holds for all
            self.stop_reason = self.world.broadcast(self.stop_reason, 0)
        if self._metrics is not None:
            self._metrics.write(metrics)
            values, step = scalars(metrics), int(metrics.get("step", 0))
            for t in self.trackers:
                t.log(values, step)

    def log_samples(self, samples: list[dict[str, Any]]) -> None:
        if self._samples is not None:
            for s in samples:
                self._samples.write(s)

    def close(self) -> None:
        for w in (self._metrics, self._samples):
            if w is not None:
                w.close()
        self._metrics = self._samples = None
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
