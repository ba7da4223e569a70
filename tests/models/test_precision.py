"""bf16 mixed precision keeps fp32 master weights: small updates land (pure bf16 loses them)."""

from __future__ import annotations

import torch
from tests.conftest import MICRO

from r1lab.config import ModelConfig
from r1lab.models import load_policy
from r1lab.models.loading import autocast

IDS = torch.randint(10, 60, (4, 12), generator=torch.Generator().manual_seed(0))  # [4, 12]


def changed_fraction(cfg: ModelConfig, steps: int = 3, lr: float = 3e-6) -> float:
    model, _ = load_policy(cfg, seed=0)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        with autocast(cfg, "cpu"):
            out = model(input_ids=IDS).logits  # [4, 12, V]
        assert out.dtype == torch.bfloat16  # the matmuls ran in bf16 either way
        loss = torch.nn.functional.cross_entropy(out[:, :-1].float().flatten(0, 1),
                                                 IDS[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    moved = sum(int((params[k] != v).sum()) for k, v in start.items())
    return moved / sum(v.numel() for v in start.values())


def test_bf16_mixed_precision_updates_nearly_every_weight():
    cfg = ModelConfig(tiny=MICRO, device="cpu", dtype="bfloat16")
    model, _ = load_policy(cfg)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 master weights
    assert changed_fraction(cfg) > 0.99


def test_pure_bf16_loses_small_updates():
    cfg = ModelConfig(tiny=MICRO, device="cpu", dtype="bfloat16", mixed_precision=False)
    model, _ = load_policy(cfg)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # AdamW's first steps move each weight by ~lr = 3e-6; bf16's spacing near 0.02 is 1.2e-4
    assert changed_fraction(cfg) < 0.2
