"""`r1lab report RUN_DIR`: one self-contained HTML page that shows what a run did.

Curves of reward, accuracy, think rate and completion length per GRPO step; the share of sampled
completions with reflection words; the "aha" step (from which the policy thinks in >= 90% of its
completions for the rest of the run); base-vs-RL evaluation when the run has one; and sample
transcripts from the start and the end of training. Plots are embedded PNGs: the file opens
anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from r1lab.analysis.behaviour import aha_step, reflection_rate, think_length


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot(metrics: list[dict[str, Any]], samples_by_step: dict[int, list[dict[str, Any]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    ax.plot(steps, [m["reward"] for m in metrics], label="reward (total)")
    if all("accuracy" in m for m in metrics):
        ax.plot(steps, [m["accuracy"] for m in metrics], label="accuracy")
    ax.set_title("reward and training accuracy")
    ax.legend()
    ax = axes[0][1]
    ax.plot(steps, [m["think_rate"] for m in metrics], color="tab:green")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("share of completions that think")
    ax = axes[1][0]
    ax.plot(steps, [m["completion_len"] for m in metrics], color="tab:purple", label="completion tokens")
    sample_steps = sorted(samples_by_step)
    if sample_steps:
        ax.plot(sample_steps, [sum(think_length(s["completion"]) for s in samples_by_step[k])
                               / len(samples_by_step[k]) for k in sample_steps],
                color="tab:orange", alpha=0.6, label="think chars (samples)")
    ax.set_title("length: thinking grows")
    ax.legend()
    ax = axes[1][1]
    if sample_steps:
        ax.plot(sample_steps, [reflection_rate(s["completion"] for s in samples_by_step[k])
                               for k in sample_steps], color="tab:red", alpha=0.5, label="logged samples")
    if all("reward/reflection" in m for m in metrics):  # the `reflection` reward, weight 0
        ax.plot(steps, [m["reward/reflection"] for m in metrics], color="darkred",
                label="all completions (reward/reflection)")
        ax.legend()
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("share of sampled completions with reflection words")
    for a in axes.flat:
        a.set_xlabel("GRPO step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[list[Any]], head: list[str]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def build_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and return its path."""
    run = Path(run_dir)
    metrics = read_jsonl(run / "metrics.jsonl")
    if not metrics:
        raise FileNotFoundError(f"{run}: no metrics.jsonl (is this a GRPO run folder?)")
    samples = read_jsonl(run / "samples.jsonl")
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_step[s["step"]].append(s)
    steps = [m["step"] for m in metrics]
    aha = aha_step(steps, [m["think_rate"] for m in metrics], 0.9)
    parts = [f"<h1>r1lab run: {html.escape(run.name)}</h1>"]
    summary_path = run / "summary.json"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        rows = [[name, f"{p['base_pass1']:.3f}", f"{p['rl_pass1']:.3f}", f"{p['base_think_rate']:.0%}",
                 f"{p['rl_think_rate']:.0%}", f"{p['base_mean_len']:.1f}", f"{p['rl_mean_len']:.1f}"]
                for name, p in s["protocols"].items()]
        parts.append(f"<h2>Held-out evaluation ({s['heldout_problems']} problems, k={s['k']})</h2>")
        parts.append(_table(rows, ["protocol", "base pass@1", "RL pass@1", "base thinks", "RL thinks",
                                   "base length", "RL length"]))
    first, last = metrics[0], metrics[-1]
    parts.append("<h2>Training</h2>")
    parts.append(_table([
        [k, f"{first.get(k, float('nan')):.3f}", f"{last.get(k, float('nan')):.3f}"]
        for k in ("reward", "accuracy", "think_rate", "completion_len") if k in first
    ], ["metric", f"step {first['step']}", f"step {last['step']}"]))
    aha_text = (f"The policy thinks in at least 90% of its completions from step {aha} on."
                if aha is not None else "The think rate never settled above 90%.")
    parts.append(f"<p class='aha'><b>Aha step:</b> {aha_text}</p>")
    if summary_path.is_file() and "aha_threshold" in s:  # a findings scenario measured reflection
        step = s.get("aha_step")
        parts.append("<p class='aha'><b>Reflection aha step:</b> " + (
            f"at least {s['aha_threshold']:.0%} of the completions check their work from step {step} on."
            if step is not None else f"the reflection rate never settled above {s['aha_threshold']:.0%}.")
            + "</p>")
    if summary_path.is_file() and s.get("caught_slip"):
        c = s["caught_slip"]
        parts.append("<h2>The policy catches its own slip</h2>")
        parts.append(f"<div class='sample'><div class='q'>{html.escape(str(c['question']))} &rarr; gold "
                     f"{html.escape(str(c['answer']))}</div><pre>{html.escape(c['completion'])}</pre></div>")
    parts.append(f"<img alt='training curves' src='data:image/png;base64,{_plot(metrics, by_step)}'>")
    for title, step in (("Early samples", min(by_step, default=None)), ("Late samples", max(by_step, default=None))):
        if step is None:
            continue
        parts.append(f"<h2>{title} (step {step})</h2>")
        for smp in by_step[step]:
            parts.append(f"<div class='sample'><div class='q'>{html.escape(str(smp['prompt']))} "
                         f"&rarr; gold {html.escape(str(smp.get('answer')))} &middot; reward "
                         f"{smp['reward']:.2f}</div><pre>{html.escape(smp['completion'])}</pre></div>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;"
             "text-align:right}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"
             ".q{color:#555;font-size:90%}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>r1lab report: "
            f"{html.escape(run.name)}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
    out = run / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
