"""Run-health alarms: checks over the metrics stream for the ways an RL run for reasoning goes
wrong (entropy collapse, length blow-up, format-only learning, reward hacking, erring rewards,
steps that learn nothing, rollout/trainer mismatch).

Each check is a registered pure function `(history, log) -> message | None`: `history` is the
run's metrics records so far (one dict per step, as in metrics.jsonl), `log` the run's
`LogConfig` (thresholds: `log.alarm_window`, `log.entropy_floor`, ...). A check reads only the
keys it needs and is silent when they are absent, so an SFT run trips no GRPO alarm.
`HealthMonitor` runs every check after each step and reports an alarm when its check starts
firing (again only after it has stopped firing); `RunLogger` prints it, writes it into the
step's record (`alarm/<name>: 1`, `alarms: ["<name>: message"]`) and, for the alarms named in
`log.stop_on`, sets `stop_reason` so the trainer checkpoints and stops.

>>> from r1lab.config import LogConfig
>>> hist = [{"step": i, "entropy": e} for i, e in enumerate([0.9, 0.8, 0.5, 0.01, 0.01], 1)]
>>> check_entropy_collapse(hist, LogConfig(alarm_window=3)) is None   # mean of last 3: 0.17
True
>>> check_entropy_collapse(hist + [{"step": 6, "entropy": 0.0}], LogConfig(alarm_window=3))[:46]
'entropy 0.007 nats/token over the last 3 steps'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from r1lab.registry import Registry

History = Sequence[dict[str, Any]]
Check = Callable[[History, Any], "str | None"]

#: name -> check(history, log_config) -> message when the alarm should fire, else None
ALARMS: Registry[Check] = Registry("alarm", "run-health checks over the metrics stream")


@dataclass(frozen=True)
class Alarm:
    name: str
    step: int
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


def series(history: History, key: str) -> list[float]:
    """The finite values of `key` in the records that have it, in step order.

    >>> series([{"a": 1}, {}, {"a": float("nan")}, {"a": 3}], "a")
    [1.0, 3.0]
    """
    out = []
    for m in history:
        v = m.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean; NaN for no values.

    >>> mean([1, 2, 6])
    3.0
    """
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")


def _first_last(values: list[float], w: int) -> tuple[float, float]:
    return mean(values[:w]), mean(values[-w:])


def format_key(record: dict[str, Any]) -> str | None:
    """The per-component reward key of the run's format reward, if it has one.

    >>> format_key({"reward/accuracy": 1, "reward/strict_format": 0.5})
    'reward/strict_format'
    """
    return next((k for k in record if k.startswith("reward/") and "format" in k), None)


def accuracy_key(record: dict[str, Any]) -> str | None:
    """The key holding training accuracy, if the record has one.

    >>> accuracy_key({"reward/accuracy": 1.0}), accuracy_key({"loss": 1.0})
    ('reward/accuracy', None)
    """
    return next((k for k in ("accuracy", "reward/accuracy") if k in record), None)


@ALARMS.register("entropy_collapse")
def check_entropy_collapse(history: History, log: Any) -> str | None:
    """Mean entropy of the last `alarm_window` steps below `entropy_floor`, or below
    `entropy_drop` x the first window's, while training accuracy is below `solved_accuracy`: the
    policy samples (nearly) one completion per prompt before it has learnt the task, so groups
    stop carrying signal and exploration is over. (The shipped demo ends at accuracy ~0.94 with
    entropy ~0.01 nats: converged, not collapsed.)"""
    w, vals = log.alarm_window, series(history, "entropy")
    if len(vals) < w:
        return None
    first, last = _first_last(vals, w)
    dropped = len(vals) >= 2 * w and first > 0 and last < log.entropy_drop * first
    akey = accuracy_key(history[-1])
    acc = series(history[-w:], akey) if akey else []
    if acc and mean(acc) >= log.solved_accuracy:  # a solved task: certainty is convergence
        return None
    if last < log.entropy_floor or dropped:
        return (f"entropy {last:.3f} nats/token over the last {w} steps (first {w}: {first:.3f}): "
                "the policy has nearly stopped exploring; raise rollout.temperature, lower "
                "optim.lr, or clip higher (algorithm.eps_high)")
    return None


@ALARMS.register("length_blowup")
def check_length_blowup(history: History, log: Any) -> str | None:
    """Share of completions cut at `rollout.max_new_tokens` above `truncation_max` over the last
    window and higher than in the first: lengths are running into the cap, and truncated
    completions get no answer (and no accuracy) at all."""
    w, vals = log.alarm_window, series(history, "truncated_rate")
    if len(vals) < w:
        return None
    first, last = _first_last(vals, w)
    if last >= log.truncation_max and last > first:
        lens = series(history, "completion_len")
        grew = f"; length {lens[0]:.0f} -> {mean(lens[-w:]):.0f} tokens" if lens else ""
        return (f"{last:.0%} of completions hit max_new_tokens over the last {w} steps (first {w}: "
                f"{first:.0%}){grew}: raise rollout.max_new_tokens, add a length penalty "
                "(rewards: overlong), or set algorithm.mask_truncated")
    return None


@ALARMS.register("format_only")
def check_format_only(history: History, log: Any) -> str | None:
    """The format reward saturated (last window's mean >= `format_saturation`) while accuracy
    gained less than `accuracy_min_gain` since the first window and still has room to grow: the
    policy learnt the template, not the task."""
    w = log.alarm_window
    if len(history) < 2 * w:
        return None
    fkey, akey = format_key(history[-1]), accuracy_key(history[-1])
    if fkey is None or akey is None:
        return None
    fmt, acc = series(history, fkey), series(history, akey)
    if len(fmt) < 2 * w or len(acc) < 2 * w:
        return None
    acc_first, acc_last = _first_last(acc, w)
    if (mean(fmt[-w:]) >= log.format_saturation and acc_last - acc_first < log.accuracy_min_gain
            and acc_last < 1.0 - log.accuracy_min_gain):
        return (f"{fkey} is {mean(fmt[-w:]):.2f} over the last {w} steps while accuracy went "
                f"{acc_first:.2f} -> {acc_last:.2f}: the policy learnt the format, not the task; "
                "lower the format weight or check the accuracy reward on a few samples")
    return None


@ALARMS.register("reward_hacking")
def check_reward_hacking(history: History, log: Any) -> str | None:
    """Held-out pass@1 (`eval/pass1`, every `eval.every` steps) fell `heldout_drop` below its
    best while the training reward around the last evaluation is above the reward around the
    best one: the policy gets better at the reward and worse at the task."""
    evals = [(i, float(m["eval/pass1"])) for i, m in enumerate(history)
             if isinstance(m.get("eval/pass1"), int | float)]
    if len(evals) < 2:
        return None
    best_i, best = max(evals[:-1], key=lambda e: e[1])
    last_i, last = evals[-1]
    w = log.alarm_window

    def reward_at(i: int) -> float:
        return mean(series(history[max(0, i - w + 1): i + 1], "reward"))

    r_best, r_last = reward_at(best_i), reward_at(last_i)
    if best - last >= log.heldout_drop and r_last > r_best:
        return (f"held-out pass@1 fell {best:.3f} -> {last:.3f} (steps {history[best_i].get('step')}"
                f" -> {history[last_i].get('step')}) while the training reward rose {r_best:.3f} "
                f"-> {r_last:.3f}: read the latest samples for reward hacking; keep the best "
                "checkpoint")
    return None


_NOT_FOUND = re.compile(r"^rewards/(.+)/(no_code|no_tests)_rate$")


@ALARMS.register("reward_errors")
def check_reward_errors(history: History, log: Any) -> str | None:
    """Rewards that raised or timed out (`reward_errors` per completion), or code rewards that
    found no program / no test (`rewards/<code>/no_code_rate`, `no_tests_rate`), above
    `reward_error_max` over the last window: those completions score 0 for a reason that is not
    the policy's."""
    w = log.alarm_window
    recent = history[-w:]
    if len(history) < w or not recent:
        return None
    shares: dict[str, float] = {}
    n = recent[-1].get("completions")
    if n and "reward_errors" in recent[-1]:
        shares["errored or timed out"] = mean(series(recent, "reward_errors")) / float(n)
    for key in recent[-1]:
        m = _NOT_FOUND.match(key)
        if m:
            what = "no program" if m.group(2) == "no_code" else "no test"
            shares[f"{m.group(1)}: {what} found"] = mean(series(recent, key))
    bad = {k: v for k, v in shares.items() if v > log.reward_error_max}
    if bad:
        told = ", ".join(f"{v:.1%} {k}" for k, v in bad.items())
        return (f"{told} over the last {w} steps (limit {log.reward_error_max:.0%}): check "
                "rewards.timeout_s, the reward's log lines, and the rows' answer/tests fields")
    return None


@ALARMS.register("zero_signal")
def check_zero_signal(history: History, log: Any) -> str | None:
    """Share of groups whose G rewards are all equal (zero advantage, no gradient) at or above
    `zero_signal_max` over the last window: the step learns (nearly) nothing."""
    w, vals = log.alarm_window, series(history, "zero_signal_groups")
    if len(vals) < w or mean(vals[-w:]) < log.zero_signal_max:
        return None
    acc = series(history[-w:], "accuracy") or series(history[-w:], "reward/accuracy")
    why = f" (accuracy {mean(acc):.2f}: the prompts are too {'easy' if mean(acc) > 0.5 else 'hard'})" if acc else ""
    return (f"{mean(vals[-w:]):.0%} of groups had all-equal rewards over the last {w} steps{why}: "
            "those groups give no gradient; use harder/easier data, a larger rollout.group_size, "
            "or algorithm.dynamic_sampling")


@ALARMS.register("rollout_mismatch")
def check_rollout_mismatch(history: History, log: Any) -> str | None:
    """KL between the rollout engine's log-probs and the trainer's (`rollout/mismatch_kl`)
    above `mismatch_kl_max`: the samples are not the trained policy's (a broken weight sync,
    or precision drift between engine and trainer)."""
    w, vals = log.alarm_window, series(history, "rollout/mismatch_kl")
    if not vals or mean(vals[-w:]) <= log.mismatch_kl_max:
        return None
    return (f"rollout/trainer log-prob KL {mean(vals[-w:]):.4f} over the last {min(w, len(vals))} "
            f"logged steps (limit {log.mismatch_kl_max}): check the weight sync and the engine's "
            "dtype")


class HealthMonitor:
    """Runs every registered check after each step; an alarm is reported on the step its check
    starts firing, and again only after the check has been silent for a step."""

    def __init__(self, log: Any, names: Sequence[str] | None = None,
                 completions: int | None = None) -> None:
        self.log, self.completions = log, completions  # completions scored per step (B x G)
        self.names = list(names) if names is not None else ALARMS.names()
        self.history: list[dict[str, Any]] = []
        self.active: set[str] = set()
        self.fired: list[Alarm] = []

    def observe(self, record: dict[str, Any]) -> list[Alarm]:
        """Add one step's metrics; returns the alarms that start firing at this step."""
        if self.completions and "reward_errors" in record:
            record.setdefault("completions", self.completions)
        self.history.append(record)
        new = []
        for name in self.names:
            message = ALARMS.get(name)(self.history, self.log)
            if message is None:
                self.active.discard(name)
            elif name not in self.active:
                self.active.add(name)
                new.append(Alarm(name, int(record.get("step", len(self.history))), message))
        self.fired += new
        return new


def replay(history: Iterable[dict[str, Any]], log: Any, completions: int | None = None) -> list[Alarm]:
    """The alarms a recorded metrics stream raises, in order (what the run would have logged).

    >>> from r1lab.config import LogConfig
    >>> hist = [{"step": s, "zero_signal_groups": z} for s, z in enumerate([0.2, 1.0, 1.0], 1)]
    >>> [str(a)[:27] for a in replay(hist, LogConfig(alarm_window=2))]
    ['zero_signal: 100% of groups']
    """
    mon = HealthMonitor(log, completions=completions)
    for record in history:
        mon.observe(dict(record))
    return mon.fired


def logged(history: Iterable[dict[str, Any]]) -> list[Alarm]:
    """The alarms written into metrics records by `RunLogger` (`alarms: ["name: message"]`).

    >>> logged([{"step": 3, "alarms": ["zero_signal: 95% of groups ..."]}])
    [Alarm(name='zero_signal', step=3, message='95% of groups ...')]
    """
    out = []
    for m in history:
        for text in m.get("alarms") or []:
            name, _, message = str(text).partition(": ")
            out.append(Alarm(name, int(m.get("step", 0)), message))
    return out


def stops(log: Any, alarm: Alarm) -> bool:
    """Whether `alarm` is one of `log.stop_on` (or `stop_on` holds `all`)."""
    return "all" in log.stop_on or alarm.name in log.stop_on
