"""r1lab's sampler: greedy equals `model.generate`, logprobs equal the trainer's, seeds, options."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import r1lab.kernels as kernels
import r1lab.onednn as onednn
from r1lab.rollout import SamplingParams, build_engine
from r1lab.rollout.hf import HFSampler
from r1lab.rollout.native import NativeDecoder, native_support
from r1lab.train.common import completion_logprobs, join_prompt_completion

PROMPTS = ["Q:12+30\nA:", "Q:7+5\nA:", "Q:345+678\nA:<think>", "Hi"]  # four lengths: left padding


def _model(tokenizer, kind: str, seed: int = 0):
    """A micro model whose weights are scaled up so greedy text varies (not one repeated token)."""
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if kind == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=4, use_sliding_window=False, **common))
    elif kind == "qwen3":  # RMSNorm on queries and keys, explicit head_dim
        model = Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=8, use_sliding_window=False, **common))
    else:  # llama with grouped-query attention (2 query heads per key/value head)
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("backend", ["native", "native, torch linears", "native, torch attention",
                                     "hf"])
def test_greedy_equals_model_generate(tokenizer, kind, backend, monkeypatch):
    """Native decoding with oneDNN linears and the C attention kernel (the CPU default), with
    torch's linears, with torch's attention, and the fallback."""
    if backend == "native, torch linears":
        monkeypatch.setattr(onednn, "_usable", False)
    else:  # oneDNN for every linear of the micro model, not only for >= 128k-element weights
        monkeypatch.setattr(onednn, "MIN_PACKED_WEIGHT", 1)
    if backend == "native, torch attention":
        monkeypatch.setattr(kernels, "supports", lambda *tensors: False)
    native = backend != "hf"
    model = _model(tokenizer, kind)
    if backend == "native":  # the default path takes the kernel wherever it builds
        assert NativeDecoder(model, 2, 8).fused == kernels.available()
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=24)[:, enc["input_ids"].shape[1]:]
    sampler = HFSampler(model, tokenizer, native=native)
    out = sampler.generate(tokenizer(PROMPTS)["input_ids"],
                           SamplingParams(n=1, max_new_tokens=24, temperature=0))
    assert sampler.last_backend == ("native" if native else "hf")
    for i in range(len(PROMPTS)):
        n = int(out.lengths[i])
        expected = ref[i].tolist()
        assert out.completion_ids[i, :n].tolist() == expected[:n]
        if n < 24:  # stopped at eos exactly where generate did
            assert expected[n - 1] == tokenizer.eos_token_id and out.finish_reasons[i] == "stop"
    assert len({tuple(r.tolist()) for r in out.completion_ids}) > 1  # the text is not degenerate
    assert len(set(out.completion_ids[0].tolist())) > 3


@pytest.mark.parametrize("native", [True, False])
def test_sampler_logprobs_equal_trainer_logprobs(tokenizer, native):
    """On-policy training reuses the sampler's logprobs: they must equal a fresh forward's,
    including rows that stopped early and were dropped from the batch mid-way."""
    model = _model(tokenizer, "qwen2", seed=1)
    sampler = HFSampler(model, tokenizer, native=native)
    params = SamplingParams(n=4, max_new_tokens=20, temperature=0.7, stop=("7",), seed=3)
    out = sampler.generate(tokenizer(PROMPTS)["input_ids"], params)
    assert "stop" in out.finish_reasons and "length" in out.finish_reasons  # compaction happened
    ids, attn, pos, L = join_prompt_completion(out.prompt_ids, out.completion_ids,
                                               out.completion_mask, sampler.pad_id)
    with torch.no_grad():
        logp = completion_logprobs(model, ids, attn, pos, L, temperature=0.7)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, L - 1:-1]
        full = torch.log_softmax(logits / 0.7, -1)
        entropy = -(full.exp() * full).sum(-1)  # [N, T] of the distribution sampled from
    diff = ((logp - out.logprobs) * out.completion_mask).abs().max().item()
    assert diff < 1e-4
    # the entropy metric comes from the sampler: it must be the sampled distribution's
    assert ((entropy - out.entropy) * out.completion_mask).abs().max().item() < 1e-4
    assert (out.entropy[out.completion_mask == 0] == 0).all() and out.entropy.max() > 0.1
    # decoding runs in inference mode, but what it returns must be usable in a loss's graph
    assert not any(x.is_inference() for x in (out.logprobs, out.completion_ids, out.entropy))
    w = torch.zeros(1, requires_grad=True)
    (torch.exp(w + out.logprobs) * out.completion_mask).sum().backward()  # saves exp(w + logprobs)
    assert w.grad is not None
    assert (out.logprobs[out.completion_mask == 0] == 0).all()
    assert (out.completion_ids[out.completion_mask == 0] == sampler.pad_id).all()


def test_seeds_reproduce_and_differ(tokenizer):
    model = _model(tokenizer, "llama")
    sampler = build_engine("hf", model, tokenizer)
    ids = tokenizer(PROMPTS)["input_ids"]
    a = sampler.generate(ids, SamplingParams(n=3, max_new_tokens=16, seed=7))
    b = sampler.generate(ids, SamplingParams(n=3, max_new_tokens=16, seed=7))
    c = sampler.generate(ids, SamplingParams(n=3, max_new_tokens=16, seed=8))
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids[:, :8], c.completion_ids[:, :8])
    assert a.completion_ids.shape[0] == 12 and a.n == 3


def test_top_k_one_is_greedy_and_top_p_keeps_the_head(tokenizer):
    model = _model(tokenizer, "llama")
    sampler = HFSampler(model, tokenizer)
    ids = tokenizer(PROMPTS)["input_ids"]
    greedy = sampler.generate(ids, SamplingParams(max_new_tokens=12, temperature=0))
    top1 = sampler.generate(ids, SamplingParams(max_new_tokens=12, top_k=1, seed=0))
    tiny_p = sampler.generate(ids, SamplingParams(max_new_tokens=12, top_p=1e-6, seed=0))
    assert torch.equal(greedy.completion_ids, top1.completion_ids)
    assert torch.equal(greedy.completion_ids, tiny_p.completion_ids)


def test_max_new_tokens_and_stop_strings(tokenizer):
    model = _model(tokenizer, "qwen2", seed=2)
    sampler = HFSampler(model, tokenizer)
    out = sampler.generate(tokenizer(PROMPTS)["input_ids"],
                           SamplingParams(n=2, max_new_tokens=9, stop=("a", "1"), seed=0))
    assert out.completion_ids.shape[1] <= 9
    for i, reason in enumerate(out.finish_reasons):
        n = int(out.lengths[i])
        decoded = tokenizer.decode(out.completion_ids[i, :n])  # tags spelled out: "<answer>"
        if reason == "stop" and out.completion_ids[i, n - 1] != tokenizer.eos_token_id:
            assert "a" in decoded or "1" in decoded
            assert not any(s in tokenizer.decode(out.completion_ids[i, : n - 1]) for s in "a1")
        if reason == "length":
            assert n == 9 and "a" not in decoded and "1" not in decoded
    assert "stop" in out.finish_reasons


def test_native_refuses_what_it_does_not_reproduce(tokenizer):
    model = _model(tokenizer, "llama")
    assert native_support(model, 64) is None
    model.config.model_type = "gpt2"
    assert "gpt2" in native_support(model, 64)
    with pytest.raises(ValueError, match="native decoding"):
        HFSampler(model, tokenizer, native=True).generate([[5, 6]], SamplingParams(max_new_tokens=2))
    assert HFSampler(model, tokenizer).generate([[5, 6]], SamplingParams(max_new_tokens=2)).texts


def test_rounded_batch_sizes_change_nothing(tokenizer, monkeypatch):
    """With oneDNN the decoder shrinks its batch only to rounded sizes (kernel cache), keeping
    some finished rows: samples, logprobs and lengths must be those of exact shrinking."""
    from r1lab import kernels
    from r1lab.rollout.native import NativeDecoder

    monkeypatch.setattr(onednn, "MIN_PACKED_WEIGHT", 1)
    # oneDNN's path: 48 rows would take the few-row C kernel, which builds no kernel per batch
    # size and so shrinks to exact sizes
    monkeypatch.setattr(kernels, "SMALL_GEMM_ROWS", 0)
    model = _model(tokenizer, "llama", seed=4)
    ids = tokenizer(PROMPTS)["input_ids"]
    params = SamplingParams(n=12, max_new_tokens=24, stop=("7", "a"), seed=5)  # 48 rows
    sizes: list[int] = []
    keep = NativeDecoder.keep
    monkeypatch.setattr(NativeDecoder, "keep", lambda self, rows: sizes.append(len(rows)) or keep(self, rows))
    rounded = HFSampler(model, tokenizer).generate(ids, params)
    if not onednn.onednn_usable():
        pytest.skip("oneDNN not usable: batch sizes are not rounded")
    assert any(s >= 32 for s in sizes) and all(s < 32 or s % 2 == 0 for s in sizes)  # 32, 34, ..
    monkeypatch.setattr(NativeDecoder, "batch_size", lambda self, alive: alive)
    exact = HFSampler(model, tokenizer).generate(ids, params)
    assert torch.equal(rounded.completion_ids, exact.completion_ids)
    assert torch.equal(rounded.lengths, exact.lengths) and rounded.finish_reasons == exact.finish_reasons
    torch.testing.assert_close(rounded.logprobs, exact.logprobs, rtol=0, atol=1e-5)
    assert 0 < int((rounded.lengths < 24).sum()) < 48  # rows did finish at different times


def test_kept_kv_cache_changes_nothing(tokenizer, monkeypatch):
    """On CPU the sampler keeps one KV-cache allocation between calls (no page faults on a fresh
    mapping each call); a call with a larger batch grows it, and the samples equal a fresh
    cache's."""
    import r1lab.rollout.hf as hf_module

    model = _model(tokenizer, "llama")
    prompts = tokenizer(PROMPTS)["input_ids"]
    params = SamplingParams(n=3, max_new_tokens=12, temperature=1.0, seed=5)
    kept = HFSampler(model, tokenizer)
    first = kept.generate(prompts, params)
    storage = kept._kv_storage
    assert storage is not None and storage.numel() == NativeDecoder.cache_elements(
        model, len(prompts) * 3, max(len(p) for p in prompts) + 12)
    again = kept.generate(prompts[:2], params)  # fewer rows: the same storage, written over
    assert kept._kv_storage is storage
    bigger = kept.generate(prompts, SamplingParams(n=5, max_new_tokens=12, temperature=1.0, seed=5))
    assert kept._kv_storage.numel() > storage.numel()
    monkeypatch.setattr(hf_module, "KV_KEEP_BYTES", 0)  # a fresh cache every call
    fresh = HFSampler(model, tokenizer)
    assert torch.equal(fresh.generate(prompts, params).completion_ids, first.completion_ids)
    assert torch.equal(fresh.generate(prompts[:2], params).completion_ids, again.completion_ids)
    assert torch.equal(fresh.generate(prompts, SamplingParams(n=5, max_new_tokens=12, temperature=1.0,
                                                              seed=5)).completion_ids,
                       bigger.completion_ids)
    assert fresh._kv_storage is None


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_bf16_matmuls_sample_near_the_fp32_policy(tokenizer, kind):
    """`matmul_dtype=bfloat16` (mixed precision's sampler): the projections run on bf16 copies of
    the weights, everything else in fp32. Its sampling log-probs are those of the fp32 model up
    to bf16 rounding: not identical, and within a few hundredths per token; the fp32 weights
    themselves are untouched."""
    model = _model(tokenizer, kind, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = HFSampler(model, tokenizer, native=True, dtype="bfloat16")
    params = SamplingParams(n=4, max_new_tokens=16, temperature=1.0, seed=5)
    out = sampler.generate(tokenizer(PROMPTS)["input_ids"], params)
    decoder = NativeDecoder(model, 2, 8, matmul_dtype=torch.bfloat16)
    assert decoder.layers[0].qkv.weight.dtype == torch.bfloat16 and decoder.kv.dtype == torch.float32
    ids, attn, pos, L = join_prompt_completion(out.prompt_ids, out.completion_ids,
                                               out.completion_mask, sampler.pad_id)
    with torch.no_grad():
        logp = completion_logprobs(model, ids, attn, pos, L, temperature=1.0)  # the fp32 policy's
    diff = ((logp - out.logprobs) * out.completion_mask).abs()
    assert 1e-4 < diff.max().item() < 0.1, diff.max().item()
    assert diff.sum().item() / out.completion_mask.sum().item() < 0.02
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_bf16_run_samples_in_bf16_unless_told_otherwise():
    """`rollout.dtype: auto` follows the training forward (bf16 under `model.dtype: bfloat16`);
    float32 asks for the weights' own; a float32 run never casts."""
    from r1lab.config import RunConfig
    from r1lab.models.loading import rollout_dtype

    cfg = lambda **s: RunConfig.model_validate(s)  # noqa: E731
    assert rollout_dtype(cfg()) is None
    assert rollout_dtype(cfg(model={"dtype": "bfloat16"})) == "bfloat16"
    assert rollout_dtype(cfg(model={"dtype": "bfloat16"}, rollout={"dtype": "float32"})) is None
    assert rollout_dtype(cfg(rollout={"dtype": "bfloat16"})) == "bfloat16"
    assert rollout_dtype(cfg(model={"dtype": "bfloat16", "mixed_precision": False})) is None
