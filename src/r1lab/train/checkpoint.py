"""Checkpoints that survive a kill at any moment, and find the last good one on resume.

A checkpoint is one directory `checkpoints/step-N/` holding

- the policy and tokenizer in Hugging Face format (it loads with `from_pretrained` as it is),
- `trainer_state.pt`: optimiser, scheduler, RNG states (python, numpy, torch, CUDA), the data
  order and position, the step counter and the skip counters (plain tensors and numbers only,
  so it loads with `torch.load(weights_only=True)`),
- `run_config.yaml`: the resolved config of the run,
- `manifest.json`: size and sha256 of every other file, written last.

What protects against what:

- a kill while writing: everything is written into `.tmp-step-N-PID/`, flushed to disk, and
  only then renamed to `step-N` (a rename within one directory is atomic on POSIX); a
  half-written directory never carries a `step-*` name, and leftovers are swept on the next save;
- a truncated or corrupted checkpoint (a full disk, a bad copy, bit rot): `verify` recomputes
  sizes and hashes against the manifest, and `latest_valid` falls back to the previous one,
  with a warning;
- unbounded disk use: only the newest `keep_last` checkpoints are kept; old ones are renamed
  out of the `step-*` namespace before they are deleted, so a kill mid-delete leaves no
  half-deleted checkpoint that looks valid.

Not protected: a disk that lies about `fsync`, two runs writing into the same run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "trainer_state.pt"
CONFIG = "run_config.yaml"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the directory and what is wrong."""


# ---------------------------------------------------------------- writing
def write_checkpoint(root: str | Path, step: int, write: Callable[[Path], None],
                     keep_last: int = 3) -> Path:
    """Write `root/step-{step}` atomically: `write(tmp_dir)` fills a temporary directory, which
    gets a manifest and is renamed into place; then only the newest `keep_last` are kept."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    tmp.mkdir()
    write(tmp)
    _write_manifest(tmp, step)
    final = root / f"step-{step}"
    if final.exists():  # a re-run of this step (resumed from an older checkpoint)
        _discard(final)
    os.replace(tmp, final)
    _fsync(root)
    for path in list_checkpoints(root):
        if _step_of(path) > step:  # a future abandoned by resuming from an older checkpoint
            log.warning("removing %s: the run continued from step %d", path, step)
            _discard(path)
    for path in list_checkpoints(root)[:-keep_last]:
        _discard(path)
    return final


def _write_manifest(directory: Path, step: int) -> None:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size,
                                                         "sha256": _sha256(path)}
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=1))
    _fsync(manifest)
    _fsync(directory)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _sweep(root: Path) -> None:
    """Delete what a killed writer left behind (never named `step-*`, so never loaded)."""
    for path in root.glob(".tmp-step-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".trash-*"):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- finding and checking
def _step_of(path: Path) -> int:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else -1


def list_checkpoints(root: str | Path) -> list[Path]:
    """`root/step-N` directories, oldest first (temporary and trashed ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)),
                  key=_step_of)


def verify(path: str | Path) -> dict[str, Any]:
    """The manifest of a complete, intact checkpoint; CheckpointError saying what is wrong."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST} (an unfinished write?)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({exc})") from None
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        size = f.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(f"{path}: {name} has {size} bytes, expected {meta['size']} (truncated?)")
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its sha256 (corrupted)")
    if STATE not in files:
        raise CheckpointError(f"{path}: no {STATE} in the manifest")
    return manifest


def latest_valid(root: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint under `root` that verifies; each newer broken one is reported
    through `warn` (default: the logger) and skipped. None when there is no valid one."""
    warn = warn or log.warning
    for path in reversed(list_checkpoints(root)):
        try:
            verify(path)
            return path
        except CheckpointError as exc:
            warn(f"skipping checkpoint {exc}; falling back to the previous one")
    return None


def resolve_resume(spec: str, run_dir: str | Path,
                   warn: Callable[[str], None] | None = None) -> Path | None:
    """What `--resume SPEC` means: `latest` -> the newest valid checkpoint of the run folder
    (None when it has none); a checkpoint directory -> that one, which must verify; a run or
    `checkpoints` folder -> its newest valid checkpoint."""
    if spec == "latest":
        return latest_valid(Path(run_dir) / "checkpoints", warn)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"--resume {spec}: no such checkpoint or run folder")
    if (path / MANIFEST).exists() or _STEP_DIR.match(path.name):
        verify(path)
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = latest_valid(root, warn)
    if found is None:
        raise CheckpointError(f"--resume {spec}: no valid checkpoint under {root}")
    return found


# ---------------------------------------------------------------- state pieces
def rng_state() -> dict[str, Any]:
    """Every global RNG a step may draw from, as plain tensors and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """random.setstate wants the nested tuples back (a round trip may give lists)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a deepspeed run's ZeRO optimiser partitions
        from r1lab.train.deepspeed_engine import safe_globals

        with safe_globals():
            return torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the safetensors weights of a checkpoint into `model` in place (same tensors, so an
    optimiser built on them stays valid). Keys left out by `save_pretrained` must be tied ones."""
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    files = ([path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
             if index.exists() else [path / "model.safetensors"])
    loaded: dict[str, torch.Tensor] = {}
    for f in files:
        loaded.update(load_file(f))
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    own = model.state_dict()
    present = {own[k].data_ptr() for k in loaded if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in present]
    if unexpected or untied:
        raise CheckpointError(f"{path}: weights do not fit the model "
                              f"(unexpected: {unexpected[:5]}, missing: {untied[:5]})")


def trim_jsonl(path: str | Path, step: int) -> None:
    """Drop records logged after `step` (and a line cut short by a kill), so a resumed run's
    metrics.jsonl / samples.jsonl read as one uninterrupted run."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def config_changes(path: str | Path, current: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between a checkpoint's run config and `current`."""
    import yaml

    saved = yaml.safe_load((Path(path) / CONFIG).read_text()) or {}
    flat_saved, flat_now = _flatten(saved), _flatten(current)
    return sorted(k for k in flat_saved.keys() | flat_now.keys()
                  if flat_saved.get(k) != flat_now.get(k))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}
