"""Where a run's metrics go: `metrics.jsonl` and `samples.jsonl` in the run folder (and, as
optional sinks of the same records, experiment trackers).

Only the main process writes: in a multi-process run the other ranks' loggers are silent, so
the files hold one line per step whatever the world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1lab.train.common import JsonlWriter
from r1lab.train.distributed import World


class RunLogger:
    """`log_metrics` once per step, `log_samples` for the step's sample transcripts.

    `stop_reason` is set when a check over the metrics stream asks the run to stop (the trainer
    then checkpoints and returns, as on SIGTERM)."""

    def __init__(self, cfg: Any, run_dir: str | Path, world: World | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.world = world or World.current()
        self.stop_reason: str | None = None
        self._metrics = self._samples = None
        if self.world.is_main:
            self._metrics = JsonlWriter(self.run_dir / "metrics.jsonl")
            self._samples = JsonlWriter(self.run_dir / "samples.jsonl")

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(metrics)

    def log_samples(self, samples: list[dict[str, Any]]) -> None:
        if self._samples is not None:
            for s in samples:
                self._samples.write(s)

    def close(self) -> None:
        for w in (self._metrics, self._samples):
            if w is not None:
                w.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
