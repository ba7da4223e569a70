"""The C attention kernels at long contexts and on the specialised head dims (64, 128), against
float64 torch: the decode step at ~1000 cached positions, the training kernel at S ~ 1000."""

from __future__ import annotations

import pytest
import torch

import r1lab.kernels as kernels

NEG = torch.finfo(torch.float32).min
needs_kernels = pytest.mark.skipif(not kernels.available(), reason=f"{kernels.why_unavailable()}")


@needs_kernels
@pytest.mark.parametrize("H,Hkv,D,length", [(4, 4, 64, 1000), (8, 2, 128, 999), (2, 1, 80, 257),
                                            (2, 2, 20, 300)])
def test_decode_long_context_equals_float64(H, Hkv, D, length):
    """Lengths odd and even (the value pass takes keys in pairs), D on the specialised (64, 128),
    generic multiple-of-16 (80) and scalar (20) paths; left padding masks the first keys."""
    g = torch.Generator().manual_seed(length + D)
    A, max_len = 3, length + 5
    qkv = torch.randn((A, (H + 2 * Hkv) * D), generator=g)
    cos, ssin = torch.randn((max_len, D), generator=g), torch.randn((max_len, D), generator=g)
    pos = torch.tensor([length, length - 7, 3])
    cache = torch.randn((2, A, Hkv, max_len, D), generator=g)
    bias = torch.zeros((A, max_len))
    bias[1, :7] = NEG
    bias[2, : length - 3] = NEG  # a row whose prompt was mostly padding
    ref = cache.double().clone()
    want = kernels.reference_decode_attention(qkv.double(), cos.double(), ssin.double(), pos,
                                              ref[0], ref[1], bias.double(), length, H, D ** -0.5)
    got = kernels.decode_attention(qkv, cos, ssin, pos, cache[0], cache[1], bias, length, H, D ** -0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache.double(), ref, rtol=1e-5, atol=1e-5)  # the new k (rotated), v


@needs_kernels
def test_decode_one_key_is_its_value():
    """length 0: the only key is the new one, so the output is v, whatever q and k are."""
    H = 1
    D = 64
    qkv = torch.randn((2, 3 * D))
    cos, ssin = torch.ones((4, D)), torch.zeros((4, D))
    cache = torch.zeros((2, 2, 1, 4, D))
    out = kernels.decode_attention(qkv, cos, ssin, torch.zeros(2, dtype=torch.long), cache[0],
                                   cache[1], torch.zeros((2, 4)), 0, H, 0.125)
    torch.testing.assert_close(out, qkv[:, 2 * D:], rtol=0, atol=1e-6)


@needs_kernels
def test_causal_long_block_equals_float64_with_gradients():
    """One block of 1030 positions (past the 16-key and 4-query blocks many times) and one
    short block padded to it: output and input gradient against float64."""
    g = torch.Generator().manual_seed(3)
    H, Hkv, D, S = 2, 1, 64, 1030
    lens = torch.tensor([S, 37])
    x = torch.randn((2, S, (H + 2 * Hkv) * D), generator=g)
    dout = torch.randn((2, S, H * D), generator=g)
    cos, ssin = torch.randn((S, D), generator=g), torch.randn((S, D), generator=g)
    x64 = x.double().requires_grad_()
    want = kernels.reference_causal_attention(x64, lens, H, Hkv, 0.125, cos.double(), ssin.double())
    (want_dx,) = torch.autograd.grad(want, x64, dout.double())
    xk = x.clone().requires_grad_()
    got = kernels.causal_attention(xk, lens, H, Hkv, 0.125, cos, ssin)
    (got_dx,) = torch.autograd.grad(got, xk, dout)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_dx.double(), want_dx, rtol=1e-4, atol=1e-4)
    assert got[1, 37:].abs().sum() == 0 and got_dx[1, 37:].abs().sum() == 0
