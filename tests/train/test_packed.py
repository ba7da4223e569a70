"""The packed training forward computes what the Hugging Face forward computes: the same token
logprobs, entropies and gradients, for Llama (grouped-query attention), Qwen2 (q/k/v biases) and
Qwen3 (q/k RMSNorm, explicit head_dim); each prompt is computed once per group; and a GRPO
update through it moves the weights as the padded forward does."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import r1lab.kernels as kernels
import r1lab.models.ops as ops
import r1lab.onednn as onednn
from r1lab.config import RunConfig
from r1lab.train.batch import Advantages, TokenBatch
from r1lab.train.common import completion_logprobs, join_prompt_completion
from r1lab.train.grpo import GRPOTrainer
from r1lab.train.packed import PackedBatch, packed_logprobs, packed_support

from .test_speed_equivalence import MICRO


def _model(tokenizer, kind: str):
    # head dims of 16 (a multiple of 16: the C attention kernel's), Qwen3's set explicitly
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=None)
    torch.manual_seed(0)
    if kind == "qwen2":  # q/k/v biases, tied embeddings
        return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=4, use_sliding_window=False,
                                            tie_word_embeddings=True, **common))
    if kind == "qwen3":  # RMSNorm on queries and keys, head_dim != hidden / heads
        return Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=32,
                                            use_sliding_window=False, **common))
    return LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))  # 2 queries per kv head


def _batch(tokenizer, group: int = 3):
    """3 prompts of different lengths x `group` completions of lengths 1..7, right-padded."""
    prompts = tokenizer(["Q:12+30\nA:", "Hi", "Q:345+678\nA:<think>"])["input_ids"]
    N, T = len(prompts) * group, 7
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 7, 4, 5, 2, 7, 3, 6, 7][:N])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    comp = torch.randint(5, len(tokenizer), (N, T), generator=g)
    comp = comp.masked_fill(mask == 0, tokenizer.pad_token_id)
    ids, attn, pos, L = join_prompt_completion(prompts, comp, mask, tokenizer.pad_token_id)
    return prompts, comp, mask, ids, attn, pos, L


def _hf_entropy(model, ids, attn, pos, L, temperature):
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, L - 1:-1] / temperature
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("attention", ["kernel", "matmuls", "sdpa"])
@pytest.mark.parametrize("linears", ["onednn", "torch"])
def test_logprobs_entropy_and_gradients_equal_the_hf_forward(tokenizer, kind, attention, linears,
                                                             monkeypatch):
    """The three attention paths (CPU: the C kernel; without it, short blocks: matmuls, long:
    SDPA, here also without the C RMSNorm and SwiGLU), both linear paths (oneDNN, used on CPU for large weights, and torch), with gradients
    and without (a reference model's forward, where oneDNN fuses SwiGLU)."""
    if attention == "kernel" and not kernels.available():
        pytest.skip(f"no C kernels here: {kernels.why_unavailable()}")
    used = []
    real = kernels.causal_attention
    monkeypatch.setattr(kernels, "causal_attention", lambda *a: used.append(1) or real(*a))
    if attention == "kernel":  # also where the CPU rule would pick torch (no AVX-512)
        monkeypatch.setattr(kernels, "_causal", (True, "forced by the test"))
    else:
        monkeypatch.setattr(kernels, "causal_supports", lambda x, head_dim: False)
    if attention == "sdpa":  # and no C kernel at all (RMSNorm, SwiGLU): the GPU's path
        monkeypatch.setattr(ops, "MATMUL_ATTENTION_MAX", 0)
        monkeypatch.setattr(kernels, "supports", lambda *tensors: False)
    if linears == "onednn":
        monkeypatch.setattr(onednn, "MIN_PACKED_WEIGHT", 1)  # the micro model's weights are small
    else:
        monkeypatch.setattr(onednn, "_usable", False)
    model = _model(tokenizer, kind).train()
    prompts, comp, mask, ids, attn, pos, L = _batch(tokenizer)
    assert packed_support(model, ids.shape[1]) is None
    weights = torch.linspace(-1, 2, mask.numel()).view_as(mask)  # a loss that weighs every token
    hf = completion_logprobs(model, ids, attn, pos, L, temperature=0.7)
    (hf * mask * weights).sum().backward()
    hf_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    pb = PackedBatch.from_padded(ids, attn, L, torch.arange(len(ids)))
    logp, ent = packed_logprobs(model, pb, temperature=0.7, entropy=True)
    assert logp.shape == mask.shape and ent.shape == mask.shape
    torch.testing.assert_close(logp * mask, hf * mask, atol=2e-5, rtol=0)
    assert bool((logp[mask == 0] == 0).all()) and bool((ent[mask == 0] == 0).all())
    with torch.no_grad():
        torch.testing.assert_close(ent * mask, _hf_entropy(model, ids, attn, pos, L, 0.7) * mask,
                                   atol=2e-5, rtol=0)
    (logp * mask * weights).sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hf_grads[k], atol=1e-5, rtol=1e-4, msg=k)
    with torch.inference_mode():
        ref, _ = packed_logprobs(model, pb, temperature=0.7)
    torch.testing.assert_close(ref * mask, hf.detach() * mask, atol=2e-5, rtol=0)
    assert bool(used) == (attention == "kernel")  # the path under test is the one that ran


def test_each_distinct_prompt_is_computed_once(tokenizer):
    prompts, comp, mask, ids, attn, pos, L = _batch(tokenizer)
    pb = PackedBatch.from_padded(ids, attn, L, torch.arange(len(ids)))
    # the 3 prompts' tokens once each + the 42 completion tokens but each completion's last
    # (a target that predicts nothing: no forward position needed)
    assert len(pb.ids) == sum(len(p) for p in prompts) + int(mask.sum()) - len(ids)
    assert int(mask.sum()) == 1 + 7 + 4 + 5 + 2 + 7 + 3 + 6 + 7
    # one completion per prompt but prompts 0 and 2 alike: the rows share one computation
    same = ids.clone()
    same[6:9] = ids[0:3]
    pb = PackedBatch.from_padded(same, attn[[0, 1, 2, 3, 4, 5, 0, 1, 2]], L, torch.tensor([0, 3, 6]))
    assert len(pb.ids) == len(prompts[0]) + len(prompts[1]) + 0 + 4 + 0
    # positions: each prompt from 0, each completion continuing its own prompt
    l0, l1 = len(prompts[0]), len(prompts[1])
    assert sorted(pb.pos.tolist()[: l0 + l1]) == sorted([*range(l0), *range(l1)])
    assert pb.pos.tolist()[l0 + l1:] == [*range(l1, l1 + 4)]


def test_a_subset_of_rows_gives_those_rows(tokenizer):
    model = _model(tokenizer, "llama").eval()
    prompts, comp, mask, ids, attn, pos, L = _batch(tokenizer)
    with torch.no_grad():
        full, _ = packed_logprobs(model, PackedBatch.from_padded(ids, attn, L, torch.arange(9)))
        rows = torch.tensor([2, 5, 6])
        part, _ = packed_logprobs(model, PackedBatch.from_padded(ids, attn, L, rows))
        one, _ = packed_logprobs(model, PackedBatch.from_padded(ids, attn, L, torch.tensor([0])))
    torch.testing.assert_close(part, full[rows], atol=1e-5, rtol=0)
    # a single one-token completion: no completion position enters the forward at all
    assert mask[0].sum() == 1
    torch.testing.assert_close(one, full[:1], atol=1e-5, rtol=0)


def test_packed_support_names_what_it_cannot_reproduce(tokenizer):
    model = _model(tokenizer, "llama")
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert packed_support(model, 32) is None  # checkpointing runs packed (test_memory)
    model = _model(tokenizer, "llama")
    model.config.attention_dropout = 0.1
    assert "dropout" in packed_support(model.train(), 32)
    assert packed_support(model.eval(), 32) is None  # no dropout outside training
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2))
    assert "gpt2" in packed_support(gpt2, 32)


def test_a_grpo_update_through_the_packed_forward_equals_the_padded_one(tmp_path, tokenizer):
    from r1lab.models.tiny import build_tiny_model

    base = build_tiny_model(RunConfig.model_validate({"model": {"tiny": MICRO}}).model.tiny,
                            tokenizer, seed=0)
    prompts, comp, mask, ids, attn, pos, L = _batch(tokenizer, group=3)
    rewards = torch.tensor([0.0, 1, 0, 1, 1, 2, 0, 0, 3])
    result = {}
    for packed in (True, False):
        model = copy.deepcopy(base)
        cfg = RunConfig.model_validate({
            "model": {"tiny": MICRO}, "rollout": {"group_size": 3, "max_new_tokens": 7},
            "algorithm": {"beta": 0.1}, "train": {"batch_size": 3, "micro_batch_size": 4,
                                                  "packed": packed},
            "optim": {"lr": 1e-2}, "log": {"progress": False}})
        tr = GRPOTrainer(cfg, model, tokenizer, [{"question": "1+1", "answer": "2"}], tmp_path)
        assert tr.forward.is_packed(model, ids.shape[1]) is packed
        tokens = TokenBatch(ids, attn, pos, L, mask, mask, group_size=3)
        adv = tr.algorithm.advantage(rewards=rewards, group_size=3, mask=mask)
        ref = tr.forward.reference(tr.ref_model, tokens)
        with torch.no_grad():
            old = completion_logprobs(model, ids, attn, pos, L) * mask
        totals = tr.update(tokens, Advantages(adv, rewards, ref_logp=ref), old)
        result[packed] = (totals, ref * mask, {k: v.detach().clone() for k, v in model.named_parameters()})
    (t_p, ref_p, w_p), (t_h, ref_h, w_h) = result[True], result[False]
    torch.testing.assert_close(ref_p, ref_h, atol=2e-5, rtol=0)
    assert abs(t_p["loss"] - t_h["loss"]) < 1e-5 and abs(t_p["kl"] - t_h["kl"]) < 1e-6
    moved = max((w_p[k] - base.state_dict()[k]).abs().max().item() for k in w_p)
    assert moved > 1e-3  # the update did something
    for k in w_p:
        torch.testing.assert_close(w_p[k], w_h[k], atol=1e-5, rtol=1e-4, msg=k)
