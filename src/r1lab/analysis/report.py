"""`r1lab report RUN_DIR`: one self-contained HTML page that explains a run.

Works for every folder r1lab writes: a GRPO or PPO run, an SFT run, the demo, a rejection
sampling run, and the staged recipes (`pipeline r1`, `distill`: the stage-by-stage table, then
one section per stage). At the top, the run-health alarms (`r1lab.health`: those the run logged,
or, for a run that logged none, what the checks find over its metrics.jsonl). Then a summary of
the config, model and data; the curves the metrics hold (reward per component, held-out
accuracy, KL, entropy, loss, grad norm, learning rate, clip fractions, length and truncation,
think rate, reflection words, reward errors, zero-signal groups); the "aha" step, only when the
policy started below the threshold; held-out evaluation; and sample transcripts labelled per
reward component, with the gold shown as the extracted answer. Plots are embedded PNGs and the
style is inline: the file opens anywhere, offline.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from r1lab.analysis.behaviour import aha_step
from r1lab.analysis.plots import points, run_plots
from r1lab.health import Alarm, logged, replay

AHA_THRESHOLD = 0.9
_STAGE = re.compile(r"^(\d+)_(\w+)$")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def gold_answer(answer: Any) -> str:
    """The gold as a grader compares it: the part after GSM8K's `####`, the `<answer>` /
    last `\\boxed{}` of a worked solution, or the answer itself.

    >>> gold_answer("Natalia sold 48/2 = 24 clips in May.\\n#### 72")
    '72'
    >>> gold_answer(r"so the total is $\\boxed{\\frac{1}{2}}$."), gold_answer(68)
    ('\\\\frac{1}{2}', '68')
    """
    from r1lab.rewards.parsing import extract_answer

    text = "" if answer is None else str(answer)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    if "\\boxed" in text or "<answer>" in text:
        return extract_answer(text) or text.strip()
    return text.strip()


def stage_folders(run: Path) -> list[Path]:
    """`N_stage` sub-folders of a staged recipe (pipeline r1, distill), in order."""
    found = [p for p in run.iterdir() if p.is_dir() and _STAGE.match(p.name)] if run.is_dir() else []
    return sorted(found, key=lambda p: (int(_STAGE.match(p.name).group(1)), p.name))


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table(rows: list[list[Any]], head: list[str]) -> str:
    cells = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def run_kind(folder: Path, metrics: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    """GRPO, PPO, SFT, rejection sampling or demo, from what the folder holds."""
    if (folder / "pretrain_metrics.jsonl").is_file() and metrics:
        return "demo (pre-training + GRPO)"
    if metrics and any("reward" in m for m in metrics):
        return "PPO" if cfg.get("critic") else "GRPO"
    if metrics:
        return "SFT"
    if "kept_rows" in _json(folder / "summary.json"):
        return "rejection sampling"
    return "run"


def config_summary(cfg: dict[str, Any], kind: str) -> list[list[Any]]:
    """(what, value) rows: model, data, and for RL runs the sampling, algorithm and rewards."""
    m, d = cfg.get("model") or {}, cfg.get("data") or {}
    tiny = m.get("tiny") or {}
    model = m.get("path") or (f"tiny Llama from scratch: hidden {tiny.get('hidden_size')}, "
                              f"{tiny.get('num_layers')} layers, {tiny.get('num_heads')} heads")
    rows = [["model", model], ["dtype", m.get("dtype", "?")],
            ["data", f"{d.get('source')} (template {d.get('template')}, prompt field "
                     f"{d.get('prompt_field')})"]]
    if kind in ("SFT",):
        s = cfg.get("sft") or {}
        rows.append(["SFT", f"{s.get('steps')} steps x {s.get('batch_size')} rows, lr {s.get('lr')}"])
        return rows
    r, a, t = cfg.get("rollout") or {}, cfg.get("algorithm") or {}, cfg.get("train") or {}
    comps = ", ".join(f"{c.get('name')} x {c.get('weight', 1.0)}"
                      for c in (cfg.get("rewards") or {}).get("components", []))
    rows += [["rewards", comps or "?"],
             ["rollout", f"G={r.get('group_size')}, max_new_tokens {r.get('max_new_tokens')}, "
                         f"temperature {r.get('temperature')}, engine {r.get('engine')}"]]
    if kind != "rejection sampling":
        rows += [["algorithm", f"advantage {a.get('advantage')}, loss {a.get('loss')}, aggregation "
                               f"{a.get('aggregation')}, beta {a.get('beta')}"],
                 ["batch", f"{t.get('batch_size')} prompts x G per step, {t.get('steps')} steps, "
                           f"lr {(cfg.get('optim') or {}).get('lr')}"]]
    return rows


def run_alarms(metrics: list[dict[str, Any]], cfg: dict[str, Any]) -> list[Alarm]:
    """What the run logged; for a run that logged nothing, what the checks find now."""
    found = logged(metrics)
    if found or not metrics:
        return found
    from r1lab.config import ConfigError, LogConfig

    try:
        log = LogConfig.model_validate(cfg.get("log") or {})
    except (ConfigError, ValueError):
        log = LogConfig()
    t, r = cfg.get("train") or {}, cfg.get("rollout") or {}
    n = t.get("batch_size", 0) * r.get("group_size", 0) or None
    return replay(metrics, log, completions=n)


def _aha(metrics: list[dict[str, Any]]) -> str:
    steps, think = points(metrics, "think_rate")
    if not think:
        return ""
    if think[0] >= AHA_THRESHOLD:
        return (f"<p class='aha'><b>Aha step:</b> none to report: the policy already thought in "
                f"{think[0]:.0%} of its completions at step {steps[0]}.</p>")
    aha = aha_step(steps, think, AHA_THRESHOLD)
    text = (f"from step {aha} on, the policy thinks in at least {AHA_THRESHOLD:.0%} of its "
            f"completions (step {steps[0]}: {think[0]:.0%})." if aha is not None else
            f"the think rate never stayed at or above {AHA_THRESHOLD:.0%} "
            f"(step {steps[0]}: {think[0]:.0%}, step {steps[-1]}: {think[-1]:.0%}).")
    return f"<p class='aha'><b>Aha step:</b> {text}</p>"


def _findings(s: dict[str, Any]) -> str:
    """A findings scenario's reflection aha step and caught-slip transcript (r1lab.pipeline.findings)."""
    parts = []
    if "aha_threshold" in s:  # a findings scenario measured reflection
        step = s.get("aha_step")
        parts.append("<p class='aha'><b>Reflection aha step:</b> " + (
            f"at least {s['aha_threshold']:.0%} of the completions check their work from step {step} on."
            if step is not None else f"the reflection rate never settled above {s['aha_threshold']:.0%}.")
            + "</p>")
    if s.get("caught_slip"):
        c = s["caught_slip"]
        parts.append("<h3>The policy catches its own slip</h3>")
        parts.append(f"<div class='sample'><div class='q'>{_esc(c['question'])} &middot; gold "
                     f"<b>{_esc(gold_answer(c['answer']))}</b></div><pre>{_esc(c['completion'])}</pre></div>")
    return "".join(parts)


def _sample(smp: dict[str, Any]) -> str:
    from r1lab.rewards.parsing import extract_answer

    badges = "".join(f"<span class='badge {'ok' if float(v) >= 1 else 'no' if float(v) <= 0 else 'mid'}'>"
                     f"{_esc(k)} {float(v):.2f}</span>" for k, v in (smp.get("rewards") or {}).items())
    total = f" &middot; total {float(smp['reward']):.2f}" if isinstance(smp.get("reward"), int | float) else ""
    kept = (" &middot; kept" if smp.get("kept") else " &middot; rejected") if "kept" in smp else ""
    said = extract_answer(str(smp.get("completion", "")))
    gold = gold_answer(smp.get("answer")) if smp.get("answer") is not None else "?"
    return (f"<div class='sample'><div class='q'>{_esc(smp.get('prompt', ''))} &middot; gold "
            f"<b>{_esc(gold)}</b> &middot; answered <b>{_esc(said if said is not None else 'no answer')}"
            f"</b></div><div>{badges}{total}{kept}</div><pre>{_esc(smp.get('completion', ''))}</pre></div>")


def _evaluation(folder: Path) -> str:
    parts = []
    s = _json(folder / "summary.json")
    if "protocols" in s:
        rows = [[name, f"{p['base_pass1']:.3f}", f"{p['rl_pass1']:.3f}", f"{p['base_think_rate']:.0%}",
                 f"{p['rl_think_rate']:.0%}", f"{p['base_mean_len']:.1f}", f"{p['rl_mean_len']:.1f}"]
                for name, p in s["protocols"].items()]
        parts.append(f"<h3>Held-out evaluation ({s.get('heldout_problems')} problems, k={s.get('k')})</h3>")
        parts.append(_table(rows, ["protocol", "base pass@1", "RL pass@1", "base thinks", "RL thinks",
                                   "base length", "RL length"]))
    ev = _json(folder / "eval.json")
    if ev and all(isinstance(v, dict) for v in ev.values()):
        rows = [[name, _fmt(v.get("pass1")), _fmt(v.get("think_rate", "")), _fmt(v.get("mean_len", ""))]
                for name, v in ev.items()]
        parts.append("<h3>Held-out evaluation of the final model</h3>")
        parts.append(_table(rows, ["protocol", "pass@1", "thinks", "mean length"]))
    if "kept_rows" in s:
        parts.append(_table([[k, _fmt(v)] for k, v in s.items() if not isinstance(v, dict | list)],
                            ["rejection sampling", "value"]))
    return "".join(parts)


def run_section(folder: Path, title: str) -> tuple[str, list[Alarm], int]:
    """HTML of one run (no page around it), its alarms, and how many plots it drew."""
    metrics = read_jsonl(folder / "metrics.jsonl")
    cfg = _config(folder)
    kind = run_kind(folder, metrics, cfg)
    samples = read_jsonl(folder / "samples.jsonl")
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_step[s.get("step", 0)].append(s)
    parts = [f"<h2>{_esc(title)} <span class='kind'>{_esc(kind)}</span></h2>"]
    if cfg:
        parts.append(_table(config_summary(cfg, kind), ["", "configuration"]))
    plots = []
    pre = read_jsonl(folder / "pretrain_metrics.jsonl")
    if pre:
        plots += [("pre-training: " + t, p) for t, p in run_plots(pre, {}, "pre-training step")
                  if "loss" in t]
    if metrics:
        first, last = metrics[0], metrics[-1]
        keys = [k for k in ("reward", "accuracy", "think_rate", "completion_len", "truncated_rate",
                            "entropy", "kl", "loss", "grad_norm", "eval/pass1") if k in first or k in last]
        parts.append(_table([[k, _fmt(first.get(k, "")), _fmt(last.get(k, ""))] for k in keys],
                            ["metric", f"step {first.get('step', 1)}", f"step {last.get('step', len(metrics))}"]))
        parts.append(_aha(metrics))
        plots += run_plots(metrics, {k: v for k, v in by_step.items() if k} if kind != "SFT" else {})
    parts.append(_findings(_json(folder / "summary.json")))
    if plots:
        parts.append("<div class='plots'>" + "".join(
            f"<figure><img class='plot' alt='{_esc(t)}' src='data:image/png;base64,{p}'>"
            f"<figcaption>{_esc(t)}</figcaption></figure>" for t, p in plots) + "</div>")
    parts.append(_evaluation(folder))
    steps = sorted(k for k in by_step if k)
    picks = [("Early samples", steps[0]), ("Late samples", steps[-1])] if steps else []
    if len(steps) == 1:
        picks = picks[:1]
    for name, step in picks:
        parts.append(f"<h3>{name} (step {step})</h3>" + "".join(_sample(s) for s in by_step[step]))
    if not steps and samples:
        parts.append("<h3>Samples</h3>" + "".join(_sample(s) for s in samples[:4]))
    return "".join(parts), run_alarms(metrics, cfg), len(plots)


def _stage_table(run: Path, stages: list[Path]) -> str:
    results = _json(run / "summary.json")
    rows = []
    for folder in stages:
        name = _STAGE.match(folder.name).group(2)
        r = results.get(name) or _json(folder / "stage.json") or _json(folder / "result.json")
        ev = r.get("eval") or {}
        rows.append([folder.name, run_kind(folder, read_jsonl(folder / "metrics.jsonl"), _config(folder)),
                     r.get("steps", ""), r.get("rows", r.get("kept_rows", "")),
                     ", ".join(f"{k} {v:.3f}" for k, v in ev.items()) if isinstance(ev, dict) else "",
                     "done" if (folder / "stage.json").is_file() else "not finished"])
    return "<h2>Stages</h2>" + _table(rows, ["stage", "kind", "steps", "rows", "held-out pass@1", "state"])


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;"
         "text-align:left}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"
         ".q{color:#555;font-size:90%}.plots{display:flex;flex-wrap:wrap;gap:8px}"
         "figure{margin:0;width:540px}figcaption{font-size:80%;color:#555}img{max-width:100%}"
         ".badge{display:inline-block;border-radius:4px;padding:1px 6px;margin-right:6px;font-size:85%}"
         ".ok{background:#d4f4d4}.no{background:#f8d4d4}.mid{background:#f4ecc4}"
         ".kind{font-size:60%;color:#777;font-weight:normal}#alarms{border:2px solid #c33;"
         "padding:0 1em;border-radius:6px}#alarms.none{border-color:#3a3}")


def build_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and return its path."""
    run = Path(run_dir)
    stages = stage_folders(run)
    folders = [(f.name, f) for f in stages] or [(run.name, run)]
    if not any((f / n).is_file() for _, f in folders for n in ("metrics.jsonl", "summary.json")):
        raise FileNotFoundError(f"{run}: no metrics.jsonl, summary.json or stage folders "
                                "(is this an r1lab run folder?)")
    sections, alarms, n_plots = [], [], 0
    for name, folder in folders:
        html_, found, n = run_section(folder, name if stages else f"run {name}")
        sections.append(html_)
        alarms += [(name, a) for a in found]
        n_plots += n
    if alarms:
        items = "".join(f"<li><b>{_esc(a.name)}</b> ({_esc(stage)}, step {a.step}): {_esc(a.message)}</li>"
                        for stage, a in alarms)
        top = f"<section id='alarms'><h2>Alarms ({len(alarms)})</h2><ul>{items}</ul></section>"
    else:
        top = ("<section id='alarms' class='none'><h2>Alarms</h2><p>No run-health alarm fired "
               "(checks: r1lab.health).</p></section>")
    head = f"<h1>r1lab report: {_esc(run.name)}</h1>"
    if stages:
        sections.insert(0, _stage_table(run, stages))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>r1lab report: {_esc(run.name)}"
            f"</title><style>{STYLE}</style></head><body data-plots='{n_plots}'>{head}{top}"
            f"{''.join(sections)}</body></html>")
    out = run / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
