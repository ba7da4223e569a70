"""Helpers for the run-survival tests: a tiny deterministic GRPO config, weights, odd rewards."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from r1lab.config import RunConfig

BASE: dict[str, Any] = {
    "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                       "intermediate_size": 64, "max_position_embeddings": 64}, "threads": 1},
    "data": {"train_size": 5, "heldout_size": 2},  # 5 rows: steps straddle epochs
    "rollout": {"group_size": 2, "max_new_tokens": 8},
    # a reward that varies within every group, so each step moves the weights (an untrained
    # model never earns accuracy or format, and zero advantages would make every test vacuous)
    "rewards": {"components": [{"name": f"{__name__}:digit_share"}, {"name": "format"}]},
    "train": {"steps": 4, "batch_size": 2, "micro_batch_size": 8, "seed": 3, "save_every": 2,
              "deterministic": True, "keep_last": 3},
    "optim": {"lr": 0.01},
    "eval": {"num_problems": 2, "k": 1, "temperatures": [1.0], "greedy": False},
    "log": {"progress": False, "samples_per_step": 1},
}


def raw_config(**sections: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values}
    return out


def tiny_config(**sections: dict[str, Any]) -> RunConfig:
    return RunConfig.model_validate(raw_config(**sections))


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / "model.safetensors")


def same_weights(a: str | Path, b: str | Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- rewards
def digit_share(completion: str, row: dict, **kwargs: Any) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


# ---------------------------------------------------------------- rewards with failures
class Flaky:
    """Every 100 calls: call 10 raises, call 60 hangs (until released or 5 s), others score 1."""

    def __init__(self) -> None:
        self.calls = self.raised = self.hung = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def __call__(self, completion: str, row: dict, **kwargs: Any) -> float:
        with self.lock:
            self.calls += 1
            n = self.calls
        if n % 100 == 10:
            with self.lock:
                self.raised += 1
            raise RuntimeError("flaky reward failed")
        if n % 100 == 60:
            with self.lock:
                self.hung += 1
            self.release.wait(5.0)
        return 1.0


FLAKY = Flaky()
NAN_STATE = {"active": False}


def flaky(completion: str, row: dict, **kwargs: Any) -> float:
    return FLAKY(completion, row, **kwargs)


def nan_when_active(completion: str, row: dict, **kwargs: Any) -> float:
    return float("nan") if NAN_STATE["active"] else 0.5 + 0.5 * ("<answer>" in completion)
