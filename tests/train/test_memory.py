"""Log-probs without full logits and gradient checkpointing: same numbers, less memory."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import MICRO

from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
from r1lab.train.common import completion_logprobs, join_prompt_completion
from r1lab.train.memory import enable_gradient_checkpointing, lean_logprobs


def batch(tok):
    prompts = [tok("12+34=", add_special_tokens=False)["input_ids"],
               tok("7+8=", add_special_tokens=False)["input_ids"]]
    gen = torch.Generator().manual_seed(3)
    comp = torch.randint(10, 60, (4, 7), generator=gen)  # [4, 7]
    mask = (torch.arange(7)[None] < torch.tensor([7, 3, 5, 1])[:, None]).float()  # ragged
    return join_prompt_completion(prompts, comp, mask, tok.pad_token_id)


def grads_of(model, fn, *args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logp = fn(model, *args)  # [4, 7]
    mask = args[1][:, args[3]:]  # [4, 7] completion tokens (padding's logprob is unused)
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp) * mask
    (logp * weights).sum().backward()
    return (logp * mask).detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_lean_logprobs_equal_full_logits_with_gradients():
    tok = build_char_tokenizer()
    model = build_tiny_model(MICRO, tok, seed=0)
    ids, attn, pos, L = batch(tok)
    full, g_full = grads_of(model, completion_logprobs, ids, attn, pos, L, 0.7)
    # chunks of 3 positions: 16 real tokens in 6 chunks, padding never computed
    lean, g_lean = grads_of(model, lambda *a: lean_logprobs(*a, chunk_tokens=3),
                            ids, attn, pos, L, 0.7)
    assert (full - lean).abs().max() < 1e-5
    assert (lean[3, 1:] == 0).all() and (lean[3, 0] < 0)  # a 1-token completion
    assert max((g_full[k] - g_lean[k]).abs().max().item() for k in g_full) < 1e-5


def test_gradient_checkpointing_same_gradients():
    tok = build_char_tokenizer()
    ids, attn, pos, L = batch(tok)
    plain = build_tiny_model(MICRO, tok, seed=0).train()
    ckpt = build_tiny_model(MICRO, tok, seed=0).train()
    enable_gradient_checkpointing(ckpt)
    _, g1 = grads_of(plain, lean_logprobs, ids, attn, pos, L)
    _, g2 = grads_of(ckpt, lean_logprobs, ids, attn, pos, L)
    assert max((g1[k] - g2[k]).abs().max().item() for k in g1) < 1e-6
    assert getattr(ckpt, "is_activation_checkpointing", None) or ckpt.is_gradient_checkpointing


def test_grpo_step_with_gradient_checkpointing_matches(tmp_path):
    from tests.train.survival import tiny_config

    from r1lab.train.grpo import GRPOTrainer
    from r1lab.train.memory import enable_gradient_checkpointing

    rows = [{"question": f"{a}+{a}", "answer": str(2 * a)} for a in range(10, 15)]
    out = []
    for ckpt in (False, True):
        cfg = tiny_config(rollout={"group_size": 4, "max_new_tokens": 8},
                          train={"steps": 1, "batch_size": 2, "seed": 3, "packed": False,
                                 "gradient_checkpointing": ckpt})
        tok = build_char_tokenizer()
        model = build_tiny_model(MICRO, tok, seed=0)
        if ckpt:
            enable_gradient_checkpointing(model)  # as run_grpo does for the config key
        trainer = GRPOTrainer(cfg, model, tok, rows, tmp_path / str(ckpt))
        assert trainer.forward.lean is ckpt
        out.append((trainer.step(), model.state_dict()))
    (m0, w0), (m1, w1) = out
    assert m1["loss"] == pytest.approx(m0["loss"], abs=1e-6)
    assert max((w0[k] - w1[k]).abs().max().item() for k in w0) < 1e-4


def saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """fn()'s output and the bytes autograd keeps for its backward (outside checkpoints)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_packed_forward_runs_under_gradient_checkpointing():
    """The packed forward with checkpointing on: same log-probs and gradients as without,
    and it keeps a fraction of the activations for the backward."""
    from r1lab.train.packed import PackedBatch, packed_logprobs, packed_support

    tok = build_char_tokenizer()
    ids, attn, pos, L = batch(tok)
    pb = PackedBatch.from_padded(ids, attn, L, torch.arange(4))
    results = []
    for ckpt in (False, True):
        model = build_tiny_model(MICRO, tok, seed=0).train()
        if ckpt:
            enable_gradient_checkpointing(model)
        assert packed_support(model, ids.shape[1]) is None  # packed, not the HF fallback
        logp, kept = saved_bytes(lambda m=model: packed_logprobs(m, pb, 0.7)[0])  # [4, 7]
        weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)
        (logp * weights).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                        kept))
    (lp0, g0, kept0), (lp1, g1, kept1) = results
    assert (lp0 - lp1).abs().max() < 1e-6
    assert max((g0[k] - g1[k]).abs().max().item() for k in g0) < 1e-6
    assert kept1 < kept0 / 3  # layer inputs only, not every layer's activations and logits


def test_grpo_step_packed_with_gradient_checkpointing_matches(tmp_path):
    from tests.train.survival import tiny_config

    from r1lab.train.grpo import GRPOTrainer

    rows = [{"question": f"{a}+{a}", "answer": str(2 * a)} for a in range(10, 15)]
    out = []
    for ckpt in (False, True):
        cfg = tiny_config(rollout={"group_size": 4, "max_new_tokens": 8},
                          train={"steps": 1, "batch_size": 2, "seed": 3,
                                 "gradient_checkpointing": ckpt})
        tok = build_char_tokenizer()
        model = build_tiny_model(MICRO, tok, seed=0)
        if ckpt:
            enable_gradient_checkpointing(model)
        trainer = GRPOTrainer(cfg, model, tok, rows, tmp_path / str(ckpt))
        assert trainer.forward.is_packed(model, 16)
        out.append((trainer.step(), model.state_dict()))
    (m0, w0), (m1, w1) = out
    assert m1["loss"] == pytest.approx(m0["loss"], abs=1e-6)
    assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], abs=1e-6)
    assert max((w0[k] - w1[k]).abs().max().item() for k in w0) < 1e-6
    assert max((w0[k] - build_tiny_model(MICRO, tok, seed=0).state_dict()[k]).abs().max().item()
               for k in w0) > 1e-4  # the step moved the weights


def test_kernels_first_loaded_inside_a_checkpointed_forward(monkeypatch):
    """The C kernels check themselves against torch (with autograd) on first use; when that
    first use is inside a gradient checkpoint, the check must not add to the tensors the
    checkpoint saves (the recomputation would then not match the forward)."""
    from r1lab import kernels
    from r1lab.train.packed import PackedBatch, packed_logprobs

    if not kernels.available():
        pytest.skip("the C kernels are not built here")
    monkeypatch.setattr(kernels, "_loaded", False)  # the next use loads and probes again
    monkeypatch.setattr(kernels, "_lib", None)
    tok = build_char_tokenizer()
    ids, attn, pos, L = batch(tok)
    model = build_tiny_model(MICRO, tok, seed=0).train()
    enable_gradient_checkpointing(model)
    logp = packed_logprobs(model, PackedBatch.from_padded(ids, attn, L, torch.arange(4)))[0]
    logp.sum().backward()  # recomputes each layer: fails on a mismatch of saved tensors
    assert kernels.available() and all(p.grad is not None for p in model.parameters())
