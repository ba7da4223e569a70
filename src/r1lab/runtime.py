"""Process-level settings that make CPU training and decoding faster.

`tune_cpu_allocator`: glibc's malloc hands every tensor above its (adaptive) mmap threshold back
to the kernel when it is freed and trims the heap top eagerly, so a decoding loop that makes
~300 short-lived activations per step, or a training step that frees and re-makes tens of MB of
activations, pays a page fault per 4 KiB page each time (the kernel zeroes every page). Keeping
freed memory in the process removes that: measured on the 2-core benchmark machine, the
sampler's decode went from ~0.8-0.9 s to ~0.55-0.7 s per batch of 64, and a packed training
forward+backward made 3x fewer page faults. The cost is that the process's resident memory stays
at its peak instead of shrinking between steps. This is what Intel's PyTorch CPU tuning guide
gets by preloading jemalloc/tcmalloc; here it is three `mallopt` calls, made once.

The run's `backend.malloc_tuning` config decides it (`set_enabled`, from
`r1lab.models.backend.resolve`); `R1LAB_MALLOC_TUNING=0` is the environment override that leaves
the allocator alone. Once made, the setting cannot be taken back within the process.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_tuned: bool | None = None
_allowed = True


def set_enabled(enabled: bool) -> bool:
    """`backend.malloc_tuning`: on tunes the allocator now, off keeps `tune_cpu_allocator` from
    doing it later in this process. Returns whether it is tuned (True after an earlier tuning
    even when `enabled` is False: it cannot be undone)."""
    global _allowed
    _allowed = enabled
    return tune_cpu_allocator() if enabled else bool(_tuned)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc on Linux only; once per process). True if set."""
    global _tuned
    if _tuned is not None:
        return _tuned
    if not _allowed:
        return False
    _tuned = False
    if not sys.platform.startswith("linux") or os.environ.get("R1LAB_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum: heap, not mmap, below it
                  & mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # give memory back only above 1 GiB free
                  & mallopt(_M_TOP_PAD, 64 << 20))  # grow the heap in 64 MiB steps
    return _tuned
