"""The ops backend of a run, chosen once when the model loads: typed config in, a record out.

The model arithmetic (`r1lab.models.ops`) runs on torch, or on CPU in float32 on r1lab's C
kernels (`r1lab.kernels`: attention, RMSNorm, SwiGLU, and the decoding linears of few rows)
and oneDNN's linears (`r1lab.onednn`). Which of them runs, and whether
the training linears' weight gradient goes through MKL or oneDNN, is the run's `backend` config
section (`r1lab.config.BackendConfig`). `resolve(cfg)`:

1. reads each choice: an environment override (`R1LAB_KERNELS`, `R1LAB_ONEDNN`,
   `R1LAB_ONEDNN_WGRAD`, `R1LAB_MALLOC_TUNING`) if set, else the config value;
2. resolves `auto` by a fixed rule (the kernels build and pass their probe; oneDNN's probe
   passes; the weight-gradient path from the CPU's vendor, family and flags,
   `r1lab.onednn.weight_grad_rule`): no timing, so the machine's load cannot decide numerics.
   Only `onednn_wgrad: tune` times the two paths, and records the timings;
3. `train.deterministic: true` forces a reproducible path: `tune` is replaced by the fixed rule
   and the RMSNorm kernel's weight gradient is reduced in a fixed order;
4. applies the choice process-wide, writes the concrete values back into `cfg.backend` (with
   `chosen_by` saying how each was chosen), and returns the record, a flat dict for the
   run's first metrics line.

A choice of `on` that cannot be honoured (no compiler, a failed probe) is a `ConfigError`
naming the key, not a silent fallback.
"""

from __future__ import annotations

import os
from typing import Any

from r1lab import kernels, onednn, runtime
from r1lab.config import ConfigError, RunConfig

#: config key -> its environment override
ENV = {"kernels": "R1LAB_KERNELS", "onednn": "R1LAB_ONEDNN", "onednn_wgrad": "R1LAB_ONEDNN_WGRAD",
       "malloc_tuning": "R1LAB_MALLOC_TUNING"}
_ON_OFF = {"0": "off", "1": "on", "off": "off", "on": "on", "auto": "auto"}
_WGRAD = {"0": "mkl", "1": "onednn", "mkl": "mkl", "onednn": "onednn", "tune": "tune", "auto": "auto"}

_last: dict[str, Any] | None = None


def requested(key: str, value: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(the value asked for, by whom): the environment override of `key` if set, else `value`.

    >>> requested("kernels", "auto", {"R1LAB_KERNELS": "0"})
    ('off', 'env R1LAB_KERNELS=0')
    >>> requested("onednn_wgrad", "tune", {})
    ('tune', 'config')
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV[key])
    if raw is None or raw == "":
        return value, "config"
    table = _WGRAD if key == "onednn_wgrad" else _ON_OFF
    if raw.lower() not in table:
        raise ConfigError(f"{ENV[key]}={raw!r} (overrides backend.{key}): expected one of "
                          f"{', '.join(sorted(table))}")
    return table[raw.lower()], f"env {ENV[key]}={raw}"


def resolve(cfg: RunConfig) -> dict[str, Any]:
    """Choose the ops backend for this process from `cfg.backend` (see the module docstring),
    apply it, write the concrete values into `cfg.backend` and return the record:
    {"kernels": "on"|"off", "onednn": ..., "onednn_wgrad": "mkl"|"onednn", "malloc_tuning": ...,
    "deterministic": bool, "chosen_by": {key: how}}."""
    global _last
    b, deterministic = cfg.backend, cfg.train.deterministic
    by: dict[str, str] = {}

    want, src = requested("kernels", b.kernels)
    ok = kernels.set_enabled(want != "off")
    if want == "on" and not ok:
        raise ConfigError(f"backend.kernels: on ({src}), but the C kernels are unavailable here: "
                          f"{kernels.why_unavailable()}")
    by["kernels"] = f"{src}: {want}" + ("" if want != "auto" else
                                        " -> built and probed" if ok else f" -> {kernels.why_unavailable()}")
    if ok:  # which of them: the packed training attention and few-row decoding linears, by flags
        by["kernels"] += f"; {kernels.causal_rule()[1]}; {kernels.gemm_rule()[1]}"
    kernels.set_deterministic(deterministic)

    want, src = requested("onednn", b.onednn)
    ok_dnn = onednn.set_enabled(want != "off")
    if want == "on" and not ok_dnn:
        raise ConfigError(f"backend.onednn: on ({src}), but oneDNN linears do not run or do not "
                          "match F.linear here")
    by["onednn"] = f"{src}: {want}" + ("" if want != "auto" else
                                       f" -> probe {'passed' if ok_dnn else 'failed'}")

    want, src = requested("onednn_wgrad", b.onednn_wgrad)
    if want == "tune" and deterministic:
        want, src = "auto", f"{src}: tune, replaced by the fixed rule (train.deterministic)"
    if want == "tune" and not ok_dnn:
        path, how = "mkl", f"{src}: tune -> mkl (oneDNN is off: nothing to time)"
    elif want == "tune":
        path, times = onednn.tune_weight_grad()
        how = f"{src}: tune -> {path} (best of 4: " + ", ".join(f"{k} {v}" for k, v in times.items()) + ")"
    elif want == "auto":
        path, why = onednn.weight_grad_rule(onednn.cpuinfo_text())
        how = f"{src}: auto -> {path} ({why})"
    else:
        path, how = want, f"{src}: {want}"
    if path == "onednn" and not ok_dnn:
        path, how = "mkl", how + "; oneDNN is off, so mkl"
    onednn.set_weight_grad(path)
    by["onednn_wgrad"] = how

    want, src = requested("malloc_tuning", b.malloc_tuning)
    cpu = cfg.model.device in ("cpu", "auto") and not _cuda_default(cfg.model.device)
    tuned = runtime.set_enabled(want == "on" or (want == "auto" and cpu))
    if want == "on" and not tuned:
        raise ConfigError(f"backend.malloc_tuning: on ({src}), but this C library cannot be tuned "
                          "(glibc on Linux only)")
    by["malloc_tuning"] = f"{src}: {want}" + (
        f" -> {'on' if tuned else 'off'}" if want == "auto" else
        ", but already tuned earlier in this process (it cannot be undone)" if want == "off" and tuned
        else "")

    b.kernels = "on" if ok else "off"
    b.onednn = "on" if ok_dnn else "off"
    b.onednn_wgrad = path
    b.malloc_tuning = "on" if tuned else "off"
    b.chosen_by = by
    _last = {"kernels": b.kernels, "onednn": b.onednn, "onednn_wgrad": b.onednn_wgrad,
             "malloc_tuning": b.malloc_tuning, "deterministic": deterministic, "chosen_by": dict(by)}
    return dict(_last)


def last() -> dict[str, Any] | None:
    """The record of the last `resolve` in this process (None before the first)."""
    return None if _last is None else dict(_last)


def _cuda_default(device: str) -> bool:
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()
