import math

import pytest

from r1lab.rewards.length import cosine_length, overlong


def test_overlong_ramp():
    vals = [
        overlong("x" * n, {}, max_length=100, cache_length=20).value for n in (0, 80, 85, 100, 101)
    ]
    assert vals == [0.0, 0.0, -0.25, -1.0, -1.0]


def test_overlong_uses_token_count_when_the_row_has_it():
    assert (
        overlong("short", {"completion_tokens": 95}, max_length=100, cache_length=20).value == -0.75
    )


def test_cosine_length_ends():
    right, wrong = "<answer>4</answer>", "<answer>5</answer>"
    row = {"answer": "4", "completion_tokens": 0}
    assert cosine_length(right, row, max_length=100).value == 1.0
    assert cosine_length(wrong, row, max_length=100).value == -1.0
    row["completion_tokens"] = 100
    assert cosine_length(right, row, max_length=100).value == pytest.approx(0.5)
    assert cosine_length(wrong, row, max_length=100).value == pytest.approx(-0.5)
    row["completion_tokens"] = 25
    expected = 0.5 + 0.25 * (1 + math.cos(math.pi / 4))
    assert cosine_length(right, row, max_length=100).value == pytest.approx(expected)


def test_overlong_max_length_follows_max_new_tokens_unless_set():
    import pytest

    from r1lab.config import ConfigError, RunConfig

    def comps(rollout, kwargs):
        cfg = RunConfig.model_validate({"rollout": rollout, "rewards": {"components": [
            {"name": "accuracy"}, {"name": "overlong", "kwargs": kwargs}, {"name": "cosine_length"}]}})  # fmt: skip
        return [c.kwargs for c in cfg.rewards.components]

    # lowered max_new_tokens: the penalty moves with it (DAPO's 20,480 / 4,096 ratio for the cache)
    assert comps({"max_new_tokens": 1000}, {})[1:] == [{"max_length": 1000, "cache_length": 200},
                                                        {"max_length": 1000}]
    assert comps({"max_new_tokens": 20480}, {})[1] == {"max_length": 20480, "cache_length": 4096}
    # set explicitly: kept
    assert comps({"max_new_tokens": 1000}, {"max_length": 800, "cache_length": 100})[1] == {
        "max_length": 800, "cache_length": 100}
    with pytest.raises(ConfigError, match=r"rewards.components.1.kwargs.cache_length: 600 is not below max_length 512"):
        comps({"max_new_tokens": 512}, {"cache_length": 600})
