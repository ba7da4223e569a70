import threading
import time
from types import SimpleNamespace

import pytest

from r1lab.registry import UnknownComponentError
from r1lab.rewards import REWARDS, RewardComposer, Score

DEMO = "<think>23+45: 3+5=8, 2+4=6</think><answer>68</answer>"


@REWARDS.register("test_boom")
def boom(completion, row, **kwargs):
    if "boom" in completion:
        raise RuntimeError("bad sample")
    return Score(2.0, {"long": len(completion) > 3, "n": len(completion)})


@REWARDS.register("test_sleepy")
def sleepy(completion, row, **kwargs):
    time.sleep(float(completion))
    return Score(1.0)


@REWARDS.register("test_spin")
def spin(completion, row, **kwargs):
    """Hangs in pure Python when asked to, swallowing every Exception on the way."""
    n = 0
    while completion == "spin":
        try:  # noqa: SIM105 - the point: a loop that swallows Exception
            n += 1
        except Exception:
            pass
    return Score(1.0)


def reward_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("reward") and t.is_alive()]


def wait_until(cond, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_weighted_sum_and_components():
    c = RewardComposer(
        [{"name": "accuracy", "weight": 1.0, "kwargs": {}}, {"name": "format", "weight": 0.5}]
    )
    b = c([DEMO, "<answer>67</answer>"], [{"answer": "68"}, {"answer": "68"}])
    assert b.total == [1.5, 0.0]
    assert b.components == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0]}
    assert b.errors == 0
    assert b.metrics["accuracy/mean"] == 0.5 and b.metrics["accuracy/no_answer_rate"] == 0.0
    assert b.per_sample_metrics[0]["accuracy/extracted_answer"] == "68"


def test_pydantic_like_objects_are_accepted():
    item = SimpleNamespace(name="format", weight=2.0, kwargs={})
    assert RewardComposer([item])([DEMO], [{}]).total == [2.0]


def test_unknown_name_fails_at_construction():
    with pytest.raises(UnknownComponentError, match="valid: .*accuracy"):
        RewardComposer([{"name": "acuracy"}])


def test_a_raising_reward_scores_zero_and_is_counted():
    b = RewardComposer([{"name": "test_boom", "weight": 1.0}])(["ok!!", "boom", "ab"], [{}] * 3)
    assert b.total == [2.0, 0.0, 2.0] and b.errors == 1
    assert b.metrics["errors/test_boom"] == 1
    assert b.metrics["test_boom/long_rate"] == 0.5 and b.metrics["test_boom/n_mean"] == 3.0


def test_parallel_timeout_scores_zero():
    c = RewardComposer([{"name": "test_sleepy"}], workers=2, timeout_s=0.3)
    start = time.monotonic()
    b = c(["0", "5", "0"], [{}] * 3)
    assert time.monotonic() - start < 2.0
    assert b.total == [1.0, 0.0, 1.0] and b.errors == 1
    c.close()


def test_parallel_matches_serial():
    comps = [{"name": "accuracy"}, {"name": "format", "weight": 0.5}, {"name": "language"}]
    texts = [DEMO, "<think>和</think><answer>68</answer>", "68"] * 4
    rows = [{"answer": "68"}] * len(texts)
    serial, par = RewardComposer(comps)(texts, rows), RewardComposer(comps, workers=3)(texts, rows)
    assert serial.total == par.total and serial.components == par.components


def test_user_function_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(completion, row, **kw):\n    return 1.0 / (1 + len(completion))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    b = RewardComposer([{"name": "my_rewards:brevity"}])(["abc"], [{}])
    assert b.total == [0.25]


def test_fast_path_128_completions():
    c = RewardComposer([{"name": "accuracy"}, {"name": "format", "weight": 0.5}])
    texts = [f"<think>{i}+1</think><answer>{i + 1}</answer>" for i in range(128)]
    rows = [{"answer": str(i + 1)} for i in range(128)]
    c(texts, rows)  # warm the gold cache, as every RL step after the first
    start = time.perf_counter()
    b = c(texts, rows)
    assert time.perf_counter() - start < 0.1
    assert b.total == [1.5] * 128


@pytest.mark.parametrize("workers", [1, 2])
def test_a_spinning_reward_is_stopped_and_scores_zero(workers):
    """A pure-Python infinite loop that catches Exception: cut off after timeout_s, its thread
    stopped (not left burning CPU), the other samples scored, the errors counted."""
    before = set(reward_threads())
    c = RewardComposer([{"name": "test_spin"}], workers=workers, timeout_s=0.3)
    start = time.monotonic()
    b = c(["spin", "ok", "spin", "ok"], [{}] * 4)
    assert time.monotonic() - start < 0.3 * 2 + 1.5  # each of the two hangs costs timeout_s
    assert b.total == [0.0, 1.0, 0.0, 1.0] and b.errors == 2 and b.metrics["errors/test_spin"] == 2
    c.close()
    assert wait_until(lambda: set(reward_threads()) - before == set())


def test_a_reward_stuck_in_c_code_is_abandoned_and_the_batch_goes_on():
    """time.sleep cannot be interrupted: the pool leaves that thread behind and scores the
    rest of the batch on a fresh pool, within timeout_s + the grace period."""
    from r1lab.rewards.compose import GRACE_S

    c = RewardComposer([{"name": "test_sleepy"}], workers=2, timeout_s=0.3)
    start = time.monotonic()
    b = c(["0", "3", "0", "0"], [{}] * 4)
    assert time.monotonic() - start < 0.3 + GRACE_S + 0.7
    assert b.total == [1.0, 0.0, 1.0, 1.0] and b.errors == 1
    b2 = c(["0", "0"], [{}] * 2)  # the next batch is not held up by the abandoned thread
    assert b2.total == [1.0, 1.0] and b2.errors == 0
    c.close()


def test_in_the_calling_thread_a_job_stuck_in_c_code_scores_zero_when_it_returns():
    c = RewardComposer([{"name": "test_sleepy"}], workers=1, timeout_s=0.3)
    start = time.monotonic()
    b = c(["0", "1.0", "0"], [{}] * 3)
    assert 1.0 <= time.monotonic() - start < 1.8
    assert b.total == [1.0, 0.0, 1.0] and b.errors == 1 and b.metrics["errors/test_sleepy"] == 1


@REWARDS.register("test_alarm")
def alarm(completion, row, **kwargs):
    """A reward with its own SIGALRM timeout, as many code and math checkers have: it needs the
    main thread."""
    import signal

    def expired(*_):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        while completion == "loop":
            pass
        return Score(1.0)
    except TimeoutError:
        return Score(0.5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_rewards_that_use_signals_work_with_one_worker():
    assert threading.current_thread() is threading.main_thread()
    b = RewardComposer([{"name": "test_alarm"}], workers=1, timeout_s=5)(["ok", "loop", "ok"], [{}] * 3)
    assert b.total == [1.0, 0.5, 1.0] and b.errors == 0


def test_hung_jobs_do_not_exhaust_the_parallel_pool():
    """Two jobs stuck in C code hold both threads of a 2-worker pool; the next batch still runs
    (on a fresh pool) instead of timing out job after job."""
    c = RewardComposer([{"name": "test_sleepy"}], workers=2, timeout_s=0.3)
    b1 = c(["3", "3", "0"], [{}] * 3)
    assert b1.total == [0.0, 0.0, 1.0] and b1.errors == 2
    start = time.monotonic()
    b2 = c(["0", "0", "0"], [{}] * 3)
    assert b2.total == [1.0, 1.0, 1.0] and b2.errors == 0
    assert time.monotonic() - start < 0.3
    c.close()
