"""Rejection sampling: every sample scored, exactly the passing ones kept (distinct, at most K per
prompt), and the kept rows train with `train sft` as they are."""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import pytest

from r1lab.config import ConfigError, RunConfig
from r1lab.pipeline.reject import run_sample
from r1lab.pipeline.sft import run_sft

MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}
REWARD = '''
def even_length(completion, row, **kw):
    """1 when the completion has an even number of characters: passes about half the time."""
    return float(len(completion) % 2 == 0)
'''


def _cfg(tmp_path, **reject) -> RunConfig:
    (tmp_path / "reject_reward.py").write_text(REWARD)
    sys.path.insert(0, str(tmp_path))
    return RunConfig.model_validate({
        "model": {"tiny": MICRO}, "data": {"source": "synthetic:addition", "train_size": 40},
        "rollout": {"max_new_tokens": 12, "temperature": 1.0},
        "rewards": {"components": [{"name": "reject_reward:even_length"}, {"name": "format"}]},
        "reject": {"samples_per_prompt": 6, "keep_per_prompt": 2, "num_prompts": 10,
                   "batch_prompts": 4, "min_scores": {"reject_reward:even_length": 1.0}, **reject},
        "train": {"seed": 3}, "log": {"progress": False}})


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_keeps_exactly_the_passing_distinct_samples_up_to_k_per_prompt(tmp_path):
    try:
        summary = run_sample(_cfg(tmp_path), tmp_path / "out")
    finally:
        sys.path.remove(str(tmp_path))
    samples = _jsonl(tmp_path / "out" / "samples.jsonl")
    kept = _jsonl(tmp_path / "out" / "sft.jsonl")
    assert len(samples) == 10 * 6 and summary["samples"] == 60
    # recompute the selection from the samples: pass = even length; keep the first 2 distinct
    expect, by_prompt = [], defaultdict(list)
    for s in samples:
        assert s["passed"] == (len(s["completion"]) % 2 == 0)
        assert s["rewards"]["reject_reward:even_length"] == float(s["passed"])
        chosen = by_prompt[s["prompt_index"]]
        keep = s["passed"] and s["completion"] not in chosen and len(chosen) < 2
        if keep:
            chosen.append(s["completion"])
            expect.append(s["completion"])
        assert s["kept"] == keep
    assert [k["completion"] for k in kept] == expect
    assert sum(s["kept"] for s in samples) == len(expect) == summary["kept_rows"]
    assert summary["pass_rate"] == sum(s["passed"] for s in samples) / 60
    assert 0 < summary["pass_rate"] < 1  # the filter did filter
    assert summary["prompts_covered"] == sum(1 for c in by_prompt.values() if c)
    passes = [sum(s["passed"] for s in samples if s["prompt_index"] == p) for p in range(10)]
    assert max(passes) > 2  # the cap of 2 per prompt was binding somewhere
    assert all(set(k) >= {"question", "answer", "completion", "rewards"} for k in kept)
    # the dataset is what `train sft` reads
    cfg = RunConfig.model_validate({"model": {"tiny": MICRO}, "log": {"progress": False},
                                    "data": {"source": str(tmp_path / "out" / "sft.jsonl")},
                                    "sft": {"steps": 3, "batch_size": 4, "lr": 1e-3}})
    result = run_sft(cfg, tmp_path / "sft")
    assert result["rows"] == len(kept) and (tmp_path / "sft" / "final" / "config.json").is_file()


def test_identical_samples_are_kept_once(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.rollout.temperature = 0.0  # greedy: the 6 samples of a prompt are one completion
    try:
        summary = run_sample(cfg, tmp_path / "out")
    finally:
        sys.path.remove(str(tmp_path))
    samples = _jsonl(tmp_path / "out" / "samples.jsonl")
    passing_prompts = {s["prompt_index"] for s in samples if s["passed"]}
    assert passing_prompts and len(samples) == 60
    for p in range(10):  # one completion six times: six passes (or none), one row kept
        assert len({s["completion"] for s in samples if s["prompt_index"] == p}) == 1
    assert summary["kept_rows"] == summary["prompts_covered"] == len(passing_prompts)
    assert len(_jsonl(tmp_path / "out" / "sft.jsonl")) == len(passing_prompts)


def test_a_threshold_on_a_reward_the_run_does_not_compute_is_refused(tmp_path):
    try:
        with pytest.raises(ConfigError, match=r"reject\.min_scores: accuracy"):
            run_sample(_cfg(tmp_path, min_scores={"accuracy": 1.0}), tmp_path / "out")
    finally:
        sys.path.remove(str(tmp_path))
    assert not (tmp_path / "out").exists()
