"""Run a function on N real processes over gloo (torch.multiprocessing spawn), for the
distributed tests; results come back through a file per rank."""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, size: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from r1lab.train.distributed import init_distributed, shutdown

    try:
        world = init_distributed("gloo", timeout_s=120)
        result = fn(world, *args)
        shutdown()
    except BaseException:  # noqa: BLE001 - reported to the test
        result = RuntimeError(traceback.format_exc())
    Path(out, f"{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable, size: int, *args: Any) -> list[Any]:
    """`fn(world, *args)` on `size` spawned processes; their return values, by rank."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_entry, args=(fn, size, free_port(), out, args), nprocs=size,
                           start_method="spawn")
        results = [pickle.loads(Path(out, f"{r}.pkl").read_bytes()) for r in range(size)]
    for r in results:
        if isinstance(r, RuntimeError):
            raise r
    return results
