"""Combine rewards into the number GRPO optimises: a weighted sum, with every part logged.

A reward that raises or times out scores 0 for that sample and is counted in `errors` (and
logged once per component and error type): a bad sample never crashes a run.

Every (sample, component) job is cut off after `timeout_s`: a job past its time gets a
`RewardTimeout` raised inside it (delivered between Python bytecodes, so a pure-Python loop
stops, even one that catches `Exception`), scores 0 and is counted.

With `workers=1` (the default) the jobs run one after another in the calling thread, watched by
a timer thread: scoring a batch of short math completions costs a few milliseconds, and rewards
that use signals (math-verify's own timeouts, `signal.alarm`) work as they do anywhere. A job
stuck inside a C call (a long `time.sleep`, a blocking read without a timeout) is stopped only
when that call returns. With `workers>1` a thread pool runs the jobs in parallel (the code
sandbox waits on subprocesses, so threads give real parallelism there); a job stuck in C code
there is abandoned after a grace period, scores 0, and the rest of the batch goes on in a fresh
pool, so a hung reward never stalls scoring. Rewards that may block in C should bound their own
time, as the code sandbox does with its wall clock, or run with `rewards.workers` > 1.

>>> composer = RewardComposer([{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.5}])
>>> batch = composer(["<think>3+5=8</think><answer>8</answer>", "8"], [{"answer": "8"}] * 2)
>>> batch.total, batch.components["format"], batch.metrics["accuracy/no_answer_rate"]
([1.5, 0.0], [1.0, 0.0], 0.5)
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from r1lab.rewards.base import RewardFn, Score, get_reward

log = logging.getLogger(__name__)

#: how long a timed-out job of the thread pool gets to stop after `RewardTimeout` is raised in
#: it, before its thread is abandoned
GRACE_S = 0.5


class RewardTimeout(BaseException):
    """Raised inside a reward job that ran past `timeout_s`. A BaseException, so a reward's own
    `except Exception` does not swallow it."""


def _raise_in(thread_id: int | None) -> None:
    """Raise `RewardTimeout` in the thread `thread_id` at its next bytecode boundary."""
    if thread_id is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(RewardTimeout))


@dataclass
class RewardBatch:
    """Scores for one batch. `total[i]` = sum over components of weight * components[name][i]."""

    total: list[float]
    components: dict[str, list[float]]
    metrics: dict[str, float]
    errors: int
    per_sample_metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Component:
    label: str
    weight: float
    kwargs: dict[str, Any]
    fn: RewardFn


def _field(item: Any, key: str, default: Any) -> Any:
    if isinstance(item, dict):
        return item.get(key, default)
    return getattr(item, key, default)


class RewardComposer:
    """Weighted sum of named rewards; `components` items are dicts or objects with
    `.name`, `.weight`, `.kwargs` (pydantic config models work as they are)."""

    def __init__(self, components: Iterable[Any], workers: int = 1, timeout_s: float = 10.0):
        self.components: list[_Component] = []
        for item in components:
            name = _field(item, "name", None)
            fn = get_reward(name)  # unknown name -> UnknownComponentError, before any work
            label = name if name not in self.labels else f"{name}#{len(self.components)}"
            weight = float(_field(item, "weight", 1.0))
            self.components.append(
                _Component(label, weight, dict(_field(item, "kwargs", {}) or {}), fn)
            )
        if not self.components:
            raise ValueError("a reward composer needs at least one component")
        self.workers, self.timeout_s = max(1, int(workers)), timeout_s
        self._pool: ThreadPoolExecutor | None = None
        self._logged: set[tuple[str, str]] = set()

    @property
    def labels(self) -> list[str]:
        return [c.label for c in getattr(self, "components", [])]

    def __call__(self, completions: Sequence[str], rows: Sequence[dict]) -> RewardBatch:
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        jobs = [(i, c) for i in range(len(completions)) for c in self.components]
        if self.workers == 1:
            scores = self._sequential(jobs, completions, rows)
        else:
            scores = self._parallel(jobs, completions, rows)
        return self._collect(len(completions), jobs, scores)

    def _safe(self, comp: _Component, completion: str, row: dict) -> Score | None:
        try:
            score = comp.fn(completion, row, **comp.kwargs)
            return score if isinstance(score, Score) else Score(float(score))
        except Exception as e:  # a reward bug must not crash training
            self._log_error(comp.label, type(e).__name__, e)
            return None

    def _log_error(self, label: str, kind: str, e: BaseException | None = None) -> None:
        if (label, kind) not in self._logged:
            self._logged.add((label, kind))
            log.warning("reward %r failed (%s: %s); scored 0 and counted", label, kind, e)

    def _sequential(self, jobs, completions, rows) -> list[Score | None]:
        """The jobs in order on the calling thread (rewards may use signals, and math-verify's
        own timeouts work there), a watchdog thread timing each."""
        scores: list[Score | None] = [None] * len(jobs)
        caller, lock = threading.get_ident(), threading.Lock()
        state: dict[str, Any] = {"k": -1, "start": 0.0, "done": False}
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.01):
                with lock:
                    k = state["k"]
                    if state["done"] or k < 0 or time.monotonic() - state["start"] <= self.timeout_s:
                        continue
                    state["start"] = float("inf")  # once per job
                    self._log_error(jobs[k][1].label, "timeout")
                    _raise_in(caller)

        threading.Thread(target=watch, name="reward-watchdog", daemon=True).start()
        try:
            for k, (i, comp) in enumerate(jobs):
                try:
                    with lock:
                        state["k"], state["start"] = k, time.monotonic()
                    scores[k] = self._safe(comp, completions[i], rows[i])
                except RewardTimeout:  # (one that lands just as job k ends hits job k+1: 0 too)
                    scores[k] = None
            while True:  # `done` is set under the lock: no RewardTimeout can come after it
                try:
                    with lock:
                        state["done"] = True
                    break
                except RewardTimeout:
                    continue
        finally:
            stop.set()
        return scores

    def _parallel(self, jobs, completions, rows) -> list[Score | None]:
        scores: list[Score | None] = [None] * len(jobs)
        started: dict[int, float] = {}
        threads: dict[int, int] = {}

        def run(k: int) -> Score | None:
            started[k], threads[k] = time.monotonic(), threading.get_ident()
            i, comp = jobs[k]
            try:
                return self._safe(comp, completions[i], rows[i])
            except RewardTimeout:
                return None

        def submit(ks) -> dict[Future, int]:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="reward")
            return {self._pool.submit(run, k): k for k in ks}

        futures = submit(range(len(jobs)))
        pending = set(futures)
        stopping: dict[Future, float] = {}  # timed out, RewardTimeout raised: when to give up on it
        while pending:
            done, pending = wait(pending, timeout=0.01, return_when=FIRST_COMPLETED)
            for f in done:
                stopping.pop(f, None)
                scores[futures[f]] = f.result()
            now = time.monotonic()
            for f in list(pending):
                k = futures[f]
                if f in stopping:
                    if now > stopping[f]:  # stuck in C code: leave its thread behind, and
                        del stopping[f]    # move the jobs not started yet to a fresh pool
                        pending.discard(f)
                        waiting = [g for g in pending if g.cancel()]
                        pending.difference_update(waiting)
                        self._pool.shutdown(wait=False)
                        self._pool = None
                        moved = submit(futures[g] for g in waiting)
                        futures.update(moved)
                        pending.update(moved)
                elif k in started and now - started[k] > self.timeout_s:
                    self._log_error(jobs[k][1].label, "timeout")
                    _raise_in(threads.get(k))
                    stopping[f] = now + GRACE_S
        return scores

    def _collect(self, n: int, jobs, scores: list[Score | None]) -> RewardBatch:
        components = {c.label: [0.0] * n for c in self.components}
        per_sample: list[dict[str, Any]] = [{} for _ in range(n)]
        errors = {c.label: 0 for c in self.components}
        collected: dict[str, dict[str, list]] = {c.label: {} for c in self.components}
        for (i, comp), score in zip(jobs, scores, strict=True):
            if score is None:
                errors[comp.label] += 1
                per_sample[i][f"{comp.label}/error"] = True
                continue
            components[comp.label][i] = float(score.value)
            for key, value in score.metrics.items():
                per_sample[i][f"{comp.label}/{key}"] = value
                collected[comp.label].setdefault(key, []).append(value)
        total = [sum(c.weight * components[c.label][i] for c in self.components) for i in range(n)]
        metrics: dict[str, float] = {
            "reward/mean": _mean(total),
            "errors/total": sum(errors.values()),
        }
        for label, values in components.items():
            metrics[f"{label}/mean"] = _mean(values)
            metrics[f"errors/{label}"] = errors[label]
            for key, vals in collected[label].items():
                if all(isinstance(v, bool) for v in vals):
                    metrics[f"{label}/{key}_rate"] = _mean([float(v) for v in vals])
                elif all(isinstance(v, int | float) for v in vals):
                    metrics[f"{label}/{key}_mean"] = _mean([float(v) for v in vals])
        return RewardBatch(total, components, metrics, sum(errors.values()), per_sample)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
