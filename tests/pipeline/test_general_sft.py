"""`pipeline.general_sft`: non-reasoning rows mixed into the rejection-sampling SFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lab.config import RunConfig
from r1lab.data.loading import DataError
from r1lab.pipeline.r1 import mix_general, sft_mixture


def test_mix_counts_and_is_reproducible():
    reasoning = [{"question": f"r{i}", "completion": "c"} for i in range(9)]
    general = [{"question": f"g{i}", "completion": "c"} for i in range(2)]
    rows = mix_general(reasoning, general, 1 / 3, seed=1)
    names = [r["question"] for r in rows]
    assert len(rows) == 12 and sorted(n for n in names if n[0] == "r") == [f"r{i}" for i in range(9)]
    drawn = [n for n in names if n[0] == "g"]
    assert len(drawn) == 3 and set(drawn) == {"g0", "g1"}  # both once, then one of them again
    assert rows == mix_general(reasoning, general, 1 / 3, seed=1)
    assert len(mix_general(reasoning, general, 0.0, seed=1)) == 9
    assert len(mix_general(reasoning, [], 0.5, seed=1)) == 9


def test_sft_mixture_file(tmp_path):
    kept, general = tmp_path / "sft.jsonl", tmp_path / "general.jsonl"
    kept.write_text("".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1), "completion": "x"}) + "\n"
                            for i in range(6)))
    general.write_text(json.dumps({"question": "write a haiku", "completion": "old pond"}) + "\n")
    cfg = RunConfig.model_validate({"pipeline": {"general_sft": str(general), "general_sft_ratio": 0.5}})
    path = sft_mixture(cfg, str(kept), tmp_path)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(rows) == 9 and sum(r["question"] == "write a haiku" for r in rows) == 3
    assert sft_mixture(RunConfig(), str(kept), tmp_path) == str(kept)  # unset: the kept rows only
    general.write_text(json.dumps({"question": "no completion"}) + "\n")
    with pytest.raises(DataError, match="general.jsonl:1"):
        sft_mixture(cfg, str(kept), tmp_path)
