"""Per-prompt sampling seeds: a completion depends only on (its prompt, its seed, its index)."""

from __future__ import annotations

import math

import pytest
import torch

from r1lab.rollout.hf import HFSampler, sample_next
from r1lab.rollout.types import SamplingParams, completion_seed

from .test_sampler import _model

PROMPTS = ["Q:12+30\nA:", "Q:7+5\nA:", "Q:345+678\nA:<think>", "Hi", "Q:1+1\nA:", "abc",
           "Q:99+901\nA:<think>x", "Q:5\n"]  # 8 prompts, 7 lengths: the left padding differs


def _rows(out, i: int, n: int):
    """Prompt i's n completions: token lists, texts, logprobs (real tokens only)."""
    rows = range(i * n, i * n + n)
    toks = [out.completion_ids[r, : int(out.lengths[r])].tolist() for r in rows]
    return toks, [out.texts[r] for r in rows], [out.logprobs[r, : int(out.lengths[r])] for r in rows]


@pytest.mark.parametrize("native", [True, False])
def test_a_completion_depends_only_on_its_prompt_seed_and_index(tokenizer, native):
    """Prompt "Q:7+5\\nA:" with seed 11 samples the same 3 completions alone, among 8 prompts,
    and in another order (at another place in the batch), on the native and the HF paths."""
    model = _model(tokenizer, "llama", seed=3)
    sampler = HFSampler(model, tokenizer, native=native)
    ids = tokenizer(PROMPTS)["input_ids"]
    seeds = (5, 11, 17, 23, 29, 31, 37, 41)
    kw = dict(n=3, max_new_tokens=16, temperature=1.0, top_p=0.95)
    alone = sampler.generate([ids[1]], SamplingParams(seeds=(11,), **kw))
    batch = sampler.generate(ids, SamplingParams(seeds=seeds, **kw))
    order = [7, 3, 5, 0, 6, 1, 4, 2]  # prompt 1 now sits at place 5
    shuffled = sampler.generate([ids[k] for k in order],
                                SamplingParams(seeds=tuple(seeds[k] for k in order), **kw))
    want_toks, want_texts, want_lp = _rows(alone, 0, 3)
    for out, place in ((batch, 1), (shuffled, order.index(1))):
        toks, texts, lps = _rows(out, place, 3)
        assert toks == want_toks and texts == want_texts
        for a, b in zip(lps, want_lp):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert len({tuple(t) for t in want_toks}) == 3  # the 3 indices draw 3 different completions
    # every other prompt, too, samples what it samples alone with its seed
    for k in (0, 6):
        solo = sampler.generate([ids[k]], SamplingParams(seeds=(seeds[k],), **kw))
        assert _rows(solo, 0, 3)[0] == _rows(batch, k, 3)[0] == _rows(shuffled, order.index(k), 3)[0]


def test_different_seeds_sample_differently_and_the_legacy_seed_is_unchanged(tokenizer):
    model = _model(tokenizer, "llama", seed=3)
    sampler = HFSampler(model, tokenizer)
    ids = tokenizer(PROMPTS[:2])["input_ids"]
    a = sampler.generate(ids, SamplingParams(n=4, max_new_tokens=12, seeds=(1, 2)))
    b = sampler.generate(ids, SamplingParams(n=4, max_new_tokens=12, seeds=(3, 4)))
    assert a.texts != b.texts and sum(x != y for x, y in zip(a.texts, b.texts)) >= 6
    # no seeds: one stream for the call from `seed`, exactly torch.rand((T, N)) as before
    p = SamplingParams(n=4, max_new_tokens=12, seed=9)
    assert torch.equal(p.uniforms(2), torch.rand((12, 8), generator=torch.Generator().manual_seed(9)))


def test_the_uniforms_of_a_completion_are_its_own_stream():
    """Column i*n + j is drawn from completion_seed(seeds[i], j) alone: the same column for
    the same (seed, j) whatever else is in the call; the wrong number of seeds is an error."""
    p = SamplingParams(n=2, max_new_tokens=5, seeds=(7, 8, 9))
    u = p.uniforms(3)  # [5, 6]
    want = torch.rand(5, generator=torch.Generator().manual_seed(completion_seed(8, 1)))
    assert torch.equal(u[:, 3], want)
    assert torch.equal(SamplingParams(n=2, max_new_tokens=5, seeds=(8,)).uniforms(1)[:, 1], want)
    assert ((u >= 0) & (u < 1)).all() and len(set(u[0].tolist())) == 6
    with pytest.raises(ValueError, match="SamplingParams.seeds: 3 seeds for 2 prompts"):
        p.uniforms(2)
    with pytest.raises(TypeError, match="SamplingParams.seeds: a tuple of ints"):
        SamplingParams(seeds=[1, 2])


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("setting", ["top_p", "top_k_temperature"])
def test_sampling_frequencies_match_the_filtered_distribution(setting):
    """4000 one-token completions (2000 prompt seeds x 2 indices) from a 5-token vocabulary.

    top_p 0.8 over p = [0.4, 0.3, 0.15, 0.1, 0.05]: the mass before tokens 0..4 is 0, 0.4,
    0.7, 0.85, 0.95, so tokens 3 and 4 are dropped and 0, 1, 2 drawn with [0.4, 0.3, 0.15]/0.85.
    top_k 3 at temperature 2: p^(1/2) = [0.632, 0.548, 0.387, 0.316, 0.224] normalised
    (sum 2.107), the top 3 renormalised: [0.632, 0.548, 0.387] / 1.567.
    The chi-square statistic (2 degrees of freedom) must stay below 13.8 (p = 0.001); the
    returned logprobs are those of the untruncated distribution (logits / temperature).
    """
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    if setting == "top_p":
        params = SamplingParams(n=2, max_new_tokens=1, top_p=0.8, seeds=tuple(range(2000)))
        kept = torch.tensor([0.4, 0.3, 0.15]) / 0.85
        logp = p.log()
    else:
        params = SamplingParams(n=2, max_new_tokens=1, top_k=3, temperature=2.0,
                                seeds=tuple(range(2000)))
        root = p.sqrt()
        kept = root[:3] / root[:3].sum()
        logp = (root / root.sum()).log()
    logits = p.log().expand(4000, 5) + 3.0  # any shift: softmax is shift-invariant
    tok, lp = sample_next(logits, params, params.uniforms(2000)[0])
    counts = torch.bincount(tok, minlength=5).float()
    assert counts[3:].sum() == 0  # truncated tokens are never drawn
    stat = _chi_square(counts[:3], kept)
    assert stat < 13.8, (counts.tolist(), stat)
    torch.testing.assert_close(lp, logp[tok], atol=1e-5, rtol=0)
    # and the check has teeth: the same counts against a uniform choice of the 3 fail it
    assert _chi_square(counts[:3], torch.full((3,), 1 / 3)) > 13.8
    assert math.isclose(float(kept.sum()), 1.0, rel_tol=1e-6)
