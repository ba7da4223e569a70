"""The allocator setting is made once, on Linux, and can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from r1lab.runtime import tune_cpu_allocator as t; print(t(), t())"


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "R1LAB_MALLOC_TUNING"}
    if env_value is not None:
        env["R1LAB_MALLOC_TUNING"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuning_is_applied_once_and_can_be_turned_off():
    assert _run(None) == "True True"  # second call: cached, no second mallopt
    assert _run("0") == "False False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_config_off_keeps_later_calls_from_tuning_and_on_tunes():
    """`backend.malloc_tuning: off` (runtime.set_enabled(False)) stops the sampler's later
    `tune_cpu_allocator()`; on tunes at once; a tuning made cannot be taken back."""
    code = ("import r1lab.runtime as r; a = r.set_enabled(False); b = r.tune_cpu_allocator(); "
            "c = r.set_enabled(True); d = r.set_enabled(False); print(a, b, c, d)")
    env = {k: v for k, v in os.environ.items() if k != "R1LAB_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False False True True"
