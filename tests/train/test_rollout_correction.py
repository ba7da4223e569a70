"""TIS / MIS reach the policy loss, and the step logs the weight-sync probe."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import MICRO
from tests.train.survival import tiny_config

from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
from r1lab.train.grpo import GRPOTrainer


def one_step(tmp_path, **rollout) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    cfg = tiny_config(rollout={"group_size": 4, "max_new_tokens": 8, **rollout},
                      train={"steps": 1, "batch_size": 2, "micro_batch_size": 8, "seed": 3})
    tok = build_char_tokenizer()
    model = build_tiny_model(MICRO, tok, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [{"question": f"{a}+{a}", "answer": str(2 * a)} for a in range(10, 15)]
    m = GRPOTrainer(cfg, model, tok, rows, tmp_path).step()
    return m, start, model.state_dict()


def moved(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_tis_with_an_engine_in_sync_is_the_plain_update(tmp_path):
    plain, start, w_plain = one_step(tmp_path / "a")
    tis, _, w_tis = one_step(tmp_path / "b", correction="tis", correction_cap=2.0)
    # the native sampler and the trainer agree (ratio 1 to float error): weight 1 everywhere
    assert plain["rollout/mismatch_kl"] < 1e-8 and tis["rollout/mismatch_max"] < 1e-5
    assert tis["loss"] == pytest.approx(plain["loss"], abs=1e-6)
    # AdamW's first step is ~lr x sign(gradient): 1e-2 moves; float-level ratios move 1e-5
    assert moved(start, w_plain) > 1e-3 and moved(w_plain, w_tis) < 1e-4


def test_mis_below_ratio_one_masks_every_token(tmp_path):
    m, start, after = one_step(tmp_path, correction="mis", correction_cap=0.5)
    # every ratio is ~1 > 0.5: every token is masked, so no gradient and no update
    assert m["loss"] == 0.0 and m["grad_norm"] == 0.0
    assert moved(start, after) == 0.0


def test_unknown_correction_lists_the_names(tmp_path):
    with pytest.raises(KeyError, match="tis"):
        one_step(tmp_path, correction="tiss")
