"""The trainer's speed-ups change no number: trimmed micro-batches, length-sorted micro-batches,
inference-mode reference logprobs, and leaving out zero-advantage completions at beta 0."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from r1lab.config import RunConfig
from r1lab.rollout import SamplingParams, build_engine
from r1lab.train.batch import Advantages, TokenBatch
from r1lab.train.common import completion_logprobs, join_prompt_completion
from r1lab.train.grpo import GRPOTrainer

MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}
PROMPTS = ["Q:12+30\nA:", "Q:7+5\nA:", "Q:345+678\nA:", "Q:1+1\nA:"]


def _naive_logprobs(model, ids, attn, pos, L):
    """The textbook computation: the whole padded batch, full log-softmax, gather."""
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, L - 1:-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, L:, None]).squeeze(-1)
    return logp * attn[:, L:]


def _rollout(model, tokenizer, n=4, max_new_tokens=16):
    engine = build_engine("hf", model, tokenizer)
    out = engine.generate(tokenizer(PROMPTS)["input_ids"],
                          SamplingParams(n=n, max_new_tokens=max_new_tokens, stop=("1",), seed=0))
    assert out.lengths.min() < out.lengths.max()  # rows of different lengths
    return out, *join_prompt_completion(out.prompt_ids, out.completion_ids, out.completion_mask,
                                        engine.pad_id)


def test_trimmed_logprobs_equal_the_textbook_computation(micro_model, tokenizer):
    out, ids, attn, pos, L = _rollout(micro_model, tokenizer)
    with torch.no_grad():
        naive = _naive_logprobs(micro_model, ids, attn, pos, L)
        for rows in (slice(0, 16), slice(0, 3), slice(5, 9)):  # own extents differ per slice
            got = completion_logprobs(micro_model, ids[rows], attn[rows], pos[rows], L)
            assert got.shape == naive[rows].shape
            got = got * attn[rows, L:]  # padding positions are masked by every caller
            torch.testing.assert_close(got, naive[rows], atol=1e-5, rtol=0)
    import r1lab.train.common as common

    old = common.LOGPROB_CHUNK_ELEMENTS
    common.LOGPROB_CHUNK_ELEMENTS = 1  # one row per chunk
    try:
        with torch.no_grad():
            chunked = completion_logprobs(micro_model, ids, attn, pos, L)
    finally:
        common.LOGPROB_CHUNK_ELEMENTS = old
    torch.testing.assert_close(chunked * attn[:, L:], naive, atol=1e-5, rtol=0)


def _trainer(tmp_path: Path, model, tokenizer, **alg) -> GRPOTrainer:
    cfg = RunConfig.model_validate({
        "model": {"tiny": MICRO}, "rollout": {"group_size": 4, "max_new_tokens": 16},
        "algorithm": alg, "train": {"batch_size": 4, "micro_batch_size": 16},
        "optim": {"lr": 1e-2}, "log": {"progress": False},
    })
    return GRPOTrainer(cfg, model, tokenizer, [{"question": "1+1", "answer": "2"}], tmp_path)


def _update_result(tmp_path, model, tokenizer, micro: int, skip: bool, beta: float = 0.0):
    model = copy.deepcopy(model)
    out, ids, attn, pos, L = _rollout(model, tokenizer)
    tr = _trainer(tmp_path, model, tokenizer, beta=beta)
    tr.forward.micro_batch_size = micro
    if beta == 0:
        tr.updater.skip_inert = skip
    rewards = torch.tensor([0.0, 1, 0, 1, 2, 2, 2, 2, 0, 0, 0, 1, 5, 5, 5, 5])  # 2 flat groups
    mask = out.completion_mask
    tokens = TokenBatch(ids, attn, pos, L, mask, mask, group_size=4)
    adv = tr.algorithm.advantage(rewards=rewards, group_size=4, mask=mask)
    ref = tr.forward.reference(tr.ref_model, tokens) if beta else None
    totals = tr.update(tokens, Advantages(adv, rewards, ref_logp=ref), out.logprobs)
    return totals, {k: v.detach().clone() for k, v in model.named_parameters()}


def test_skipping_zero_advantage_rows_at_beta0_changes_no_weight(tmp_path, micro_model, tokenizer):
    ref_totals, ref_params = _update_result(tmp_path, micro_model, tokenizer, 16, skip=False)
    for micro, skip in ((16, True), (3, True), (3, False)):
        totals, params = _update_result(tmp_path, micro_model, tokenizer, micro, skip)
        assert abs(totals["loss"] - ref_totals["loss"]) < 1e-6
        for k in params:
            torch.testing.assert_close(params[k], ref_params[k], atol=1e-5, rtol=1e-5)
        assert totals.get("skipped_rows", 0) == (8 if skip else 0)


def test_no_rows_are_skipped_when_a_kl_term_is_in_the_loss(tmp_path, micro_model, tokenizer):
    totals, _ = _update_result(tmp_path, micro_model, tokenizer, 3, skip=True, beta=0.1)
    assert "skipped_rows" not in totals and totals["kl"] >= 0


def test_reference_logprobs_under_inference_mode_can_enter_the_graph(tmp_path, micro_model, tokenizer):
    out, ids, attn, pos, L = _rollout(micro_model, tokenizer)
    tr = _trainer(tmp_path, micro_model, tokenizer, beta=0.1)
    mask = out.completion_mask
    ref = tr.forward.reference(tr.ref_model, TokenBatch(ids, attn, pos, L, mask, mask, group_size=4))
    with torch.no_grad():
        torch.testing.assert_close(ref * attn[:, L:], _naive_logprobs(tr.ref_model, ids, attn, pos, L),
                                   atol=1e-5, rtol=0)
    logp = completion_logprobs(micro_model, ids, attn, pos, L)
    (torch.exp(ref - logp) * out.completion_mask).sum().backward()  # autograd may save `ref`


def test_a_token_budget_cuts_micro_batches_and_changes_no_weight(tmp_path, micro_model, tokenizer):
    ref_totals, ref_params = _update_result(tmp_path, micro_model, tokenizer, 16, skip=False)
    model = copy.deepcopy(micro_model)
    out, ids, attn, pos, L = _rollout(model, tokenizer)
    tr = _trainer(tmp_path, model, tokenizer)
    tr.updater.skip_inert = False
    tr.forward.token_budget = budget = 40
    mask = out.completion_mask
    tokens = TokenBatch(ids, attn, pos, L, mask, mask, group_size=4)
    cost = (attn.sum(-1)).tolist()  # prompt + completion tokens of each row
    chunks = tr.forward.micro_batches(model, tokens, torch.arange(16))
    assert sorted(i for c in chunks for i in c.tolist()) == list(range(16)) and len(chunks) > 1
    assert all(sum(cost[i] for i in c.tolist()) <= budget or len(c) == 1 for c in chunks)
    rewards = torch.tensor([0.0, 1, 0, 1, 2, 2, 2, 2, 0, 0, 0, 1, 5, 5, 5, 5])
    adv = tr.algorithm.advantage(rewards=rewards, group_size=4, mask=mask)
    totals = tr.update(tokens, Advantages(adv, rewards), out.logprobs)
    assert abs(totals["loss"] - ref_totals["loss"]) < 1e-6
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), ref_params[k], atol=1e-5, rtol=1e-5)
