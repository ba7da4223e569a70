"""Run `r1lab train grpo ...` and SIGKILL this process at a chosen point (for test_resume.py).

    python kill_run.py POINT r1lab-args...

POINT is `none`, `update:N` (inside the step that starts at step N, after sampling and before
the optimiser step), `manifest:N` (writing checkpoint step-N: weights and state written into the
temporary directory, no manifest, no rename) or `prune:N` (step-N renamed into place, older
checkpoints not yet deleted).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from r1lab import cli
from r1lab.train import checkpoint
from r1lab.train.update import PolicyUpdate


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    kind, _, n = point.partition(":")
    if kind == "update":
        update = PolicyUpdate.__call__

        def _update(self, *args, **kwargs):
            if self.scheduler.last_epoch == int(n):  # optimiser steps taken so far
                die()
            return update(self, *args, **kwargs)

        PolicyUpdate.__call__ = _update
    elif kind == "manifest":
        write_manifest = checkpoint._write_manifest

        def _write_manifest(directory, step):
            if step == int(n):
                die()
            return write_manifest(directory, step)

        checkpoint._write_manifest = _write_manifest
    elif kind == "prune":
        discard = checkpoint._discard

        def _discard(path):
            if any(p.name == f"step-{n}" for p in checkpoint.list_checkpoints(path.parent)):
                die()
            return discard(path)

        checkpoint._discard = _discard


if __name__ == "__main__":
    here = Path(__file__).resolve()
    sys.path[:0] = [str(here.parents[1]), str(here.parents[2])]  # the test rewards import
    arm(sys.argv[1])
    sys.argv = ["r1lab", *sys.argv[2:]]
    cli.main()
