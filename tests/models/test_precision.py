"""bf16 mixed precision keeps fp32 master weights: small updates land (pure bf16 loses them)."""

from __future__ import annotations

import copy

import pytest
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


# ---------------------------------------------------------------------------- in the trainers
def _tokens(model):
    """A TokenBatch of 2 prompts x 2 completions of random tokens (the packed path's input)."""
    from r1lab.train.batch import TokenBatch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 60, (4, 14), generator=g)
    attn = torch.ones_like(ids)
    attn[1, -3:] = 0  # a shorter completion
    ids[:2, :6], ids[2:, :6] = ids[0, :6], ids[2, :6]  # each group shares its prompt
    mask = attn[:, 6:].float()
    return TokenBatch(input_ids=ids, attn=attn, pos=(attn.cumsum(-1) - 1).clamp(min=0),
                      prompt_len=6, mask=mask, train_mask=mask, group_size=2)


def test_grpo_forward_runs_in_bf16_under_mixed_precision_and_keeps_fp32_gradients():
    """`model.dtype: bfloat16` (mixed) puts the trainer's forward under autocast: its log-probs
    are float32 but differ from the fp32 forward's by bf16 rounding (not 0, not more than a few
    hundredths), and the gradients reach the fp32 master weights, close to the fp32 ones."""
    from r1lab.config import RunConfig
    from r1lab.models.tiny import build_char_tokenizer
    from r1lab.train.forward import Forward
    from r1lab.train.grpo import GRPOTrainer

    tok = build_char_tokenizer()
    cfg = RunConfig.model_validate({"model": {"tiny": MICRO.model_dump(), "dtype": "bfloat16"},
                                    "log": {"progress": False}})
    model, _ = load_policy(cfg.model, seed=0)
    trainer = GRPOTrainer(cfg, model, tok, [{"question": "1+2", "answer": "3"}], "/tmp/r1lab-prec")
    assert trainer.forward.autocast is torch.bfloat16
    assert trainer.engine.dtype is torch.bfloat16  # the sampler's projections too (rollout.dtype auto)
    t, rows = _tokens(model), torch.arange(4)
    fp32 = Forward(4, 1.0)
    assert trainer.forward.is_packed(model, t.width)  # the packed forward, not HF's
    grads = []
    for fwd in (fp32, trainer.forward):
        model.zero_grad()
        logp = fwd.logprobs(model, t, rows)
        assert logp.dtype == torch.float32
        (logp * t.mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        if fwd is fp32:
            want = logp.detach()
    diff = (logp.detach() - want).abs().max().item()
    assert 1e-5 < diff < 0.05, diff  # bf16 rounding: present, and small
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0).item()
    assert cos > 0.99, cos


def test_sft_under_autocast_computes_in_bf16(micro_model, tokenizer):
    """`train_sft(autocast=bfloat16)`: the loss differs from the fp32 loss by bf16 rounding."""
    from r1lab.train.sft import train_sft

    pairs = [("Q:1+2\nA:", "<think>1+2=3</think><answer>3</answer>")] * 4
    losses = {}
    for dt in (None, torch.bfloat16):
        model = copy.deepcopy(micro_model)
        losses[dt] = train_sft(model, tokenizer, pairs, steps=1, batch_size=4, lr=0.0,
                               warmup_steps=1, progress=False, autocast=dt)[0]
    assert 1e-6 < abs(losses[None] - losses[torch.bfloat16]) < 0.05, losses


def test_bf16_attention_runs_in_fp32_on_the_kernel(monkeypatch):
    """Under autocast the training attention takes the C kernel in fp32 (RoPE and softmax in
    fp32) on q/k/v cast up from bf16: the output equals the kernel's on those values."""
    import r1lab.kernels as kernels
    from r1lab.models import ops

    if not kernels.available():
        pytest.skip("the C kernels do not build here")
    monkeypatch.setattr(kernels, "_causal", (True, "forced by the test"))  # whatever the CPU
    g = torch.Generator().manual_seed(0)
    n, H, D = 10, 2, 16
    qkv = torch.randn(n, 3 * H, D, generator=g).bfloat16()
    gather = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 6, 7, 8, 9]])  # two blocks sharing a prompt
    block_len = torch.tensor([6, 6])
    cos, ssin = (torch.randn(8, D, generator=g) for _ in range(2))
    pos = torch.tensor([0, 1, 2, 3, 4, 5, 2, 3, 4, 5])
    got = ops.block_causal_attention(qkv, gather, block_len, H, H, 0.25, cos, ssin, pos)
    want = ops.block_causal_attention(qkv.float(), gather, block_len, H, H, 0.25, cos, ssin, pos)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
