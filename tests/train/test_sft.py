"""The SFT loop: the packed loss equals the Hugging Face loss (mean cross-entropy over the
completion tokens), both paths train identically, and training fits a small set."""

from __future__ import annotations

import copy
import math

import torch

from r1lab.train.sft import _loss, encode_pairs, train_sft

PAIRS = [("Q:1+2\nA:", "3"), ("Q:12+30\nA:", "<think>2+0=2;1+3=4</think>42"),
         ("Q:5+5\nA:", "10"), ("Q:12+30\nA:", "42"), ("Q:99+1\nA:", "<think>9+1=10</think>100")]


def test_packed_loss_and_gradients_equal_the_hf_loss(micro_model, tokenizer):
    batch = encode_pairs(tokenizer, PAIRS)  # different lengths, one prompt used twice
    model = micro_model.train()
    hf = _loss(model, batch, tokenizer.pad_token_id, packed=False)
    hf.backward()
    hf_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ours = _loss(model, batch, tokenizer.pad_token_id, packed=True)
    ours.backward()
    assert abs(ours.item() - hf.item()) < 1e-5
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hf_grads[k], atol=1e-6, rtol=1e-4, msg=k)


def test_a_fresh_model_starts_near_uniform_loss_and_fits_the_pairs(micro_model, tokenizer):
    model = micro_model
    batch = encode_pairs(tokenizer, PAIRS)
    with torch.no_grad():  # a freshly initialised model is close to uniform over the vocabulary
        first = _loss(model, batch, tokenizer.pad_token_id, packed=True).item()
    assert abs(first - math.log(len(tokenizer))) < 0.5
    runs = {}
    for packed in (True, False):
        m = copy.deepcopy(model)
        runs[packed] = train_sft(m, tokenizer, PAIRS, steps=60, batch_size=5, lr=1e-2,
                                 warmup_steps=2, progress=False, packed=packed)
    assert abs(runs[True][0] - first) < 1e-5  # step 1's loss is the loss at the initial weights
    assert runs[True][-1] < 0.3 * first  # it learns the five answers
    for a, b in zip(runs[True], runs[False]):  # same trajectory either way
        assert abs(a - b) < 1e-3 * max(1.0, abs(b))
