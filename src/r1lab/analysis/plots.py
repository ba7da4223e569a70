"""The report's curves: one small PNG per quantity, drawn only when the metrics hold it.

Each plot is `(title, png_base64)`; titles say what is drawn, never what it shows.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

from r1lab.analysis.behaviour import reflection_rate, think_length

Records = Sequence[dict[str, Any]]


def points(records: Records, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records holding a finite number under `key`.

    >>> points([{"step": 1, "kl": 0.5}, {"step": 2}, {"step": 3, "kl": float("nan")}], "kl")
    ([1], [0.5])
    """
    xs, ys = [], []
    for i, m in enumerate(records):
        v = m.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(m.get("step", i + 1))
            ys.append(float(v))
    return xs, ys


def keys_like(records: Records, prefix: str) -> list[str]:
    """Every key starting with `prefix`, in first-seen order.

    >>> keys_like([{"clip_frac": 0, "clip_frac_low": 0}, {"clip_frac_high": 0}], "clip_frac")
    ['clip_frac', 'clip_frac_low', 'clip_frac_high']
    """
    seen: dict[str, None] = {}
    for m in records:
        for k in m:
            if k.startswith(prefix):
                seen.setdefault(k, None)
    return list(seen)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(title: str, series: list[tuple[str, list[float], list[float]]], *, ylabel: str = "",
            unit_range: bool = False, twin: tuple[str, list[float], list[float]] | None = None,
            xlabel: str = "step", log: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.1))
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 12 else None, ms=3)
    if unit_range:
        ax.set_ylim(-0.02, 1.02)
    if log and all(y > 0 for _, _, ys in series for y in ys):
        ax.set_yscale("log")
    if twin is not None:
        ax2 = ax.twinx()
        ax2.plot(twin[1], twin[2], color="tab:red", alpha=0.7, label=twin[0])
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel(twin[0])
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1 or twin is not None:
        ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def run_plots(metrics: Records, samples_by_step: dict[int, list[dict[str, Any]]],
              xlabel: str = "step") -> list[tuple[str, str]]:
    """Every curve the metrics (and sample transcripts) hold, as (title, png base64)."""
    out: list[tuple[str, str]] = []

    def add(title: str, keys: Sequence[str], **kw: Any) -> None:
        series = [(k, *points(metrics, k)) for k in keys]
        series = [s for s in series if s[1]]
        if series:
            out.append((title, _figure(title, series, xlabel=xlabel, **kw)))

    components = [k for k in keys_like(metrics, "reward/") if k.count("/") == 1]
    add("training reward: total and per component (mean over completions)", ["reward", *components])
    add("held-out pass@1 and think rate during training (eval.every)",
        [k for k in keys_like(metrics, "eval/") if k.endswith(("pass1", "think_rate"))], unit_range=True)
    add("KL estimate", ["kl", *keys_like(metrics, "rollout/mismatch_kl")])
    add("policy entropy (nats per token)", ["entropy"])
    add("loss", ["loss", *(k for k in ("value_loss", "vf_loss") if k in (metrics[-1] if metrics else {}))])
    add("gradient norm (before clipping)", ["grad_norm"])
    add("learning rate", ["lr"])
    add("clip fractions (share of completion tokens)",
        keys_like(metrics, "clip_frac") + keys_like(metrics, "dual_clip_frac") + keys_like(metrics, "vf_clip_frac"))
    lens, trunc = points(metrics, "completion_len"), points(metrics, "truncated_rate")
    if lens[0]:
        title = "completion length (tokens) and share truncated at max_new_tokens"
        out.append((title, _figure(title, [("completion tokens", *lens)], xlabel=xlabel,
                                   twin=("truncated", *trunc) if trunc[0] else None)))
    add("share of completions with a think block", ["think_rate"], unit_range=True)
    steps = sorted(samples_by_step)
    if steps:
        title = "sampled completions: share with reflection words, and think length"
        refl = [reflection_rate(s["completion"] for s in samples_by_step[k]) for k in steps]
        think = [sum(think_length(s["completion"]) for s in samples_by_step[k]) / len(samples_by_step[k])
                 for k in steps]
        out.append((title, _figure(title, [("think chars (mean)", steps, think)], xlabel=xlabel,
                                   twin=("with reflection words", steps, refl))))
    # the `reflection` reward (weight 0) measures every completion, not only the logged samples
    add("share of all completions with reflection words (reward/reflection)", ["reward/reflection"],
        unit_range=True)
    errors = ["reward_errors", *(k for k in keys_like(metrics, "rewards/")
                                 if k.endswith(("no_code_rate", "no_tests_rate", "parse_failure_rate",
                                                "no_answer_rate")))]
    add("reward errors per step, and no-answer / no-program / no-test rates", errors)
    add("share of groups with all-equal rewards (no gradient)", ["zero_signal_groups"], unit_range=True)
    add("peak memory per process (MiB)", keys_like(metrics, "memory/"))
    add("seconds per step", [k for k in ("step_s", "generate_s", "update_s") if k in (metrics[-1] if metrics else {})])
    return out
