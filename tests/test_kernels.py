"""The C decode kernel: hand-computed values, agreement with torch, the cache write, the build."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import r1lab.kernels as kernels
from r1lab.kernels import decode_attention, reference_decode_attention

NEG = torch.finfo(torch.float32).min

needs_kernels = pytest.mark.skipif(not kernels.available(), reason=f"{kernels.why_unavailable()}")


@needs_kernels
def test_hand_computed_two_positions():
    """A=1, H=Hkv=1, D=2, RoPE the identity (cos 1, sin 0): q=(1,0), keys (0,0) and (2,0),
    values (1,2) and (3,4), scale 1 -> weights softmax(0, 2) = (1, e^2) / (1 + e^2)."""
    qkv = torch.tensor([[1.0, 0.0, 2.0, 0.0, 3.0, 4.0]])  # q | new k | new v
    cos, ssin = torch.ones((4, 2)), torch.zeros((4, 2))
    cache = torch.zeros((2, 1, 1, 4, 2))
    cache[1, 0, 0, 0] = torch.tensor([1.0, 2.0])  # position 0: k (0,0), v (1,2)
    bias = torch.zeros((1, 4))
    out = decode_attention(qkv, cos, ssin, torch.tensor([1]), cache[0], cache[1], bias, 1, 1, 1.0)
    w1 = math.exp(2) / (1 + math.exp(2))
    assert out[0].tolist() == pytest.approx([1 + 2 * w1, 2 + 2 * w1], rel=1e-6)
    assert cache[0, 0, 0, 1].tolist() == [2.0, 0.0] and cache[1, 0, 0, 1].tolist() == [3.0, 4.0]
    # a masked key gets no weight: only position 1 is seen
    bias[0, 0] = NEG
    cache[:, :, :, 1] = 0
    out = decode_attention(qkv, cos, ssin, torch.tensor([1]), cache[0], cache[1], bias, 1, 1, 1.0)
    assert out.tolist() == [[3.0, 4.0]]


@needs_kernels
def test_rope_is_rotate_half():
    """RoPE by hand for D=4 at one position: (x1, x2, x3, x4) -> (x1 c0 - x3 s0, x2 c1 - x4 s1,
    x3 c0 + x1 s0, x4 c1 + x2 s1), checked through the key written into the cache."""
    c, s = [0.6, 0.28], [0.8, 0.96]
    cos = torch.tensor([c + c])
    ssin = torch.tensor([[-s[0], -s[1], s[0], s[1]]])  # the sign of rotate_half folded in
    x = [1.0, 2.0, 3.0, 4.0]
    qkv = torch.tensor([[0.0] * 4 + x + [0.0] * 4])
    cache = torch.zeros((2, 1, 1, 1, 4))
    decode_attention(qkv, cos, ssin, torch.tensor([0]), cache[0], cache[1], torch.zeros((1, 1)),
                     0, 1, 1.0)
    want = [x[0] * c[0] - x[2] * s[0], x[1] * c[1] - x[3] * s[1],
            x[2] * c[0] + x[0] * s[0], x[3] * c[1] + x[1] * s[1]]
    assert cache[0, 0, 0, 0].tolist() == pytest.approx(want, rel=1e-6)


@needs_kernels
@pytest.mark.parametrize("H,Hkv,D", [(4, 4, 16), (8, 2, 32), (6, 1, 64)])
@pytest.mark.parametrize("length", [0, 5, 70])
def test_equals_torch_on_random_inputs(H, Hkv, D, length):
    """Random left padding, positions and a cache whose rows are a slice of a bigger one."""
    g = torch.Generator().manual_seed(H * 1000 + length)
    A, max_len = 5, 96
    qkv = torch.randn((A, (H + 2 * Hkv) * D), generator=g)
    cos, ssin = torch.randn((max_len, D), generator=g), torch.randn((max_len, D), generator=g)
    pos = torch.randint(0, max_len, (A,), generator=g)
    cache = torch.randn((2, A + 3, Hkv, max_len, D), generator=g)[:, :A]  # row stride of 8 rows
    bias = torch.zeros((A + 3, max_len))[:A]
    for a in range(A):
        bias[a, : a * length // A] = NEG  # left padding, never the new position
    ref_cache = cache.clone()
    want = reference_decode_attention(qkv.double(), cos.double(), ssin.double(), pos,
                                      ref_cache[0].double(), ref_cache[1].double(), bias.double(),
                                      length, H, 0.125)
    got = decode_attention(qkv, cos, ssin, pos, cache[0], cache[1], bias, length, H, 0.125)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    ref_cache = ref_cache.clone()
    reference_decode_attention(qkv, cos, ssin, pos, ref_cache[0], ref_cache[1], bias, length, H, 0.125)
    torch.testing.assert_close(cache, ref_cache, rtol=1e-5, atol=1e-5)
    untouched = torch.ones(max_len, dtype=torch.bool)
    untouched[length] = False
    torch.testing.assert_close(cache[..., untouched, :], ref_cache[..., untouched, :], rtol=0, atol=0)


@needs_kernels
def test_loading_keeps_denormals():
    """A library linked with -ffast-math by gcc < 13 sets flush-to-zero for the whole process."""
    assert kernels.available()
    assert (torch.tensor(1e-40) * 1.0).item() != 0.0


def test_switch_off_and_missing_compiler(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("R1LAB_KERNELS", "0")
    assert not kernels.available() and kernels.why_unavailable() == "R1LAB_KERNELS=0"
    assert not kernels.supports(torch.zeros(1))
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setenv("R1LAB_KERNELS", "1")
    monkeypatch.setenv("CC", "no-such-compiler-r1lab")
    monkeypatch.setenv("R1LAB_KERNEL_CACHE", str(tmp_path))
    assert not kernels.available()
    assert "no-such-compiler-r1lab" in kernels.why_unavailable()
    with pytest.raises(RuntimeError, match="not on PATH"):
        kernels.build()


def test_a_failed_compile_reports_the_compiler_message(tmp_path, monkeypatch):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C;\n")
    monkeypatch.setattr(kernels, "SOURCES", [bad])
    monkeypatch.setenv("R1LAB_KERNEL_CACHE", str(tmp_path / "cache"))
    if kernels.shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    with pytest.raises(RuntimeError, match="error"):
        kernels.build()
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-built is left to load


@needs_kernels
def test_concurrent_builds_into_one_cache(tmp_path):
    """Two processes building into an empty cache at once (DDP ranks, pytest workers) both load."""
    env = os.environ | {"R1LAB_KERNEL_CACHE": str(tmp_path)}
    code = "import r1lab.kernels as k; assert k.available(), k.why_unavailable()"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len(list(tmp_path.glob("*.so"))) == 1


# ----------------------------------------------------------------------- causal (training)
@needs_kernels
def test_causal_hand_computed():
    """One block, one head, D=16 (only the first two dims non-zero), scale 1. Position 0 sees
    itself only: out_0 = v_0. Position 1: q_1 = (1, 0), k_0 = (0, 0), k_1 = (2, 0) ->
    weights (1, e^2) / (1 + e^2) over v_0 = (1, 2), v_1 = (3, 4). Position 2 is padding: 0."""
    x = torch.zeros((1, 3, 48))  # [R, S, (q | k | v) * 16]
    x[0, 0, 32:34] = torch.tensor([1.0, 2.0])  # v_0
    x[0, 1, 0] = 1.0  # q_1
    x[0, 1, 16] = 2.0  # k_1
    x[0, 1, 32:34] = torch.tensor([3.0, 4.0])  # v_1
    x[0, 2] = 7.0  # padding: must not matter
    out = kernels.causal_attention(x, torch.tensor([2]), 1, 1, 1.0)
    w1 = math.exp(2) / (1 + math.exp(2))
    assert out[0, 0, :2].tolist() == [1.0, 2.0]
    assert out[0, 1, :2].tolist() == pytest.approx([1 + 2 * w1, 2 + 2 * w1], rel=1e-6)
    assert out[0, :2, 2:].abs().max() == 0 and out[0, 2].abs().max() == 0


@needs_kernels
@pytest.mark.parametrize("H,Hkv,D", [(4, 4, 64), (4, 2, 16), (8, 2, 128), (3, 1, 48)])
@pytest.mark.parametrize("S", [1, 7, 37])
def test_causal_equals_torch_with_gradients(H, Hkv, D, S):
    """Forward and input gradient (RoPE included) against the float64 torch reference: grouped-query heads,
    head dims on the specialised (64, 128) and generic paths, lengths around the 4-query and
    16-key blocks, and blocks with padding (gradient 0 there)."""
    g = torch.Generator().manual_seed(S * 100 + D)
    R = 4
    lens = torch.tensor([S, max(1, S - 3), max(1, S // 2), 1])
    x = torch.randn((R, S, (H + 2 * Hkv) * D), generator=g)
    dout = torch.randn((R, S, H * D), generator=g)
    cos, ssin = torch.randn((S + 2, D), generator=g), torch.randn((S + 2, D), generator=g)
    x64 = x.double().requires_grad_()
    want = kernels.reference_causal_attention(x64, lens, H, Hkv, 0.2, cos.double(), ssin.double())
    (want_dx,) = torch.autograd.grad(want, x64, dout.double())
    xk = x.clone().requires_grad_()
    got = kernels.causal_attention(xk, lens, H, Hkv, 0.2, cos, ssin)
    (got_dx,) = torch.autograd.grad(got, xk, dout)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_dx.double(), want_dx, rtol=1e-4, atol=1e-4)
    pad = torch.arange(S)[None] >= lens[:, None]  # [R, S]
    assert got[pad].abs().sum() == 0 and got_dx[pad].abs().sum() == 0


@needs_kernels
def test_causal_without_grad_and_second_order():
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 5, 3 * 16), generator=g)
    with torch.no_grad():
        out = kernels.causal_attention(x, torch.tensor([5, 2]), 1, 1, 0.5)
    ref = kernels.reference_causal_attention(x, torch.tensor([5, 2]), 1, 1, 0.5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # second order (a gradient penalty): the create_graph backward is differentiable
    w = torch.randn((2, 5, 16), generator=g)
    grads = []
    for fn in (kernels.causal_attention, kernels.reference_causal_attention):
        xg = x.clone().requires_grad_()
        (dx,) = torch.autograd.grad((fn(xg, torch.tensor([5, 2]), 1, 1, 0.5) * w).sum(), xg,
                                    create_graph=True)
        (dx ** 2).sum().backward()
        grads.append(xg.grad)
    assert grads[1].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_causal_head_dim_rule():
    x = torch.zeros(1)
    assert not kernels.causal_supports(x, 12) and not kernels.causal_supports(x, 272)
    assert kernels.causal_supports(x, 64) == (kernels.available() and kernels.causal_rule()[0])
    assert not kernels.causal_supports(x.double(), 64)


def test_causal_kernel_only_with_avx512():
    """The training attention kernel is register-blocked for AVX-512: other CPUs take torch."""
    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
    zen5 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16\n"
    assert kernels.causal_rule(zen3)[0] is False and "torch" in kernels.causal_rule(zen3)[1]
    assert kernels.causal_rule(zen5) == (True, "AVX-512F: causal attention on the C kernel")
    assert kernels.causal_rule("")[0] is False  # no flags line: the torch path
    here = "avx512f" in Path("/proc/cpuinfo").read_text().split()
    assert kernels.causal_rule()[0] is here


# ----------------------------------------------------------------------- RMSNorm, SwiGLU
@needs_kernels
def test_rms_norm_hand_computed_and_gradients():
    """Row (3, 4): mean square 12.5, eps 0 -> (3, 4) / sqrt(12.5); weight (2, 1) scales it."""
    x = torch.tensor([[3.0, 4.0]])
    r = 1 / math.sqrt(12.5)
    assert kernels.rms_norm(x, None, 0.0)[0].tolist() == pytest.approx([3 * r, 4 * r], rel=1e-6)
    w = torch.tensor([2.0, 1.0])
    assert kernels.rms_norm(x, w, 0.0)[0].tolist() == pytest.approx([6 * r, 4 * r], rel=1e-6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((37, 3, 48), generator=g, dtype=torch.float64)
    w = torch.randn(48, generator=g, dtype=torch.float64)
    dy = torch.randn((37, 3, 48), generator=g, dtype=torch.float64)
    grads = []
    for fn, dt in ((kernels.rms_norm, torch.float32), (kernels.reference_rms_norm, torch.float64)):
        xs, ws = x.to(dt).requires_grad_(), w.to(dt).requires_grad_()
        y = fn(xs, ws, 1e-5)
        grads.append((y, *torch.autograd.grad(y, (xs, ws), dy.to(dt))))
    for got, want in zip(*grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_swiglu_hand_computed_and_gradients():
    """silu(1) * 2 = 2 / (1 + e^-1); a very negative gate gives 0, not nan."""
    a = kernels.swiglu(torch.tensor([1.0, -200.0]), torch.tensor([2.0, 3.0]))
    assert a[0].item() == pytest.approx(2 / (1 + math.exp(-1)), rel=1e-6)
    assert a[1].item() == pytest.approx(0.0, abs=1e-30)
    g = torch.Generator().manual_seed(1)
    gate, up, da = (torch.randn((129, 40), generator=g, dtype=torch.float64) * 4 for _ in range(3))
    res = []
    for fn, dt in ((kernels.swiglu, torch.float32), (kernels.reference_swiglu, torch.float64)):
        gs, us = gate.to(dt).requires_grad_(), up.to(dt).requires_grad_()
        y = fn(gs, us)
        res.append((y, *torch.autograd.grad(y, (gs, us), da.to(dt))))
    for got, want in zip(*res):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="differ in shape"):
        kernels.swiglu(torch.zeros(3), torch.zeros(4))


# ----------------------------------------------------------------------- few-row GEMM
@needs_kernels
def test_small_gemm_hand_computed():
    """x = [[1, 2], [3, 4]], W = [[1, 0], [1, 1], [0, -1]], b = (0, 1, 2): x W^T + b =
    [[1, 4, 0], [3, 8, -2]]; then SiLU, + h and * h of those numbers."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    b = torch.tensor([0.0, 1.0, 2.0])
    panels = kernels.pack_panels(w)
    assert panels.shape == (1, 2, 32) and panels[0, :, 3:].abs().sum() == 0  # zero-padded panel
    y = [[1.0, 4.0, 0.0], [3.0, 8.0, -2.0]]
    assert kernels.small_gemm(x, panels, 3, b).tolist() == y
    silu = [[v / (1 + math.exp(-v)) for v in row] for row in y]
    got = kernels.small_gemm(x, panels, 3, b, "silu")
    for g_row, s_row in zip(got.tolist(), silu):
        assert g_row == pytest.approx(s_row, rel=1e-6, abs=1e-7)
    h = torch.tensor([[10.0, 20.0, 30.0], [-1.0, 0.5, 2.0]])
    assert kernels.small_gemm(x, panels, 3, b, "add", h).tolist() == [[11, 24, 30], [2, 8.5, 0]]
    assert kernels.small_gemm(x, panels, 3, b, "mul", h).tolist() == [[10, 80, 0], [-3, 4, -4]]
    assert kernels.small_gemm(x, panels, 3, None).tolist() == [[1, 3, -2], [3, 7, -4]]
    assert kernels.small_gemm(x, panels, 3, None, "silu", None)[0, 0].item() == pytest.approx(
        1 / (1 + math.exp(-1)), rel=1e-6)
    # a very negative pre-activation: SiLU gives (almost) 0, not nan (exp clamped)
    big = kernels.small_gemm(torch.tensor([[-1e4, 0.0]]), panels, 3, None, "silu")
    assert torch.isfinite(big).all() and big[0, 0].abs().item() < 1e-20


@needs_kernels
@pytest.mark.parametrize("M", [1, 2, 3, 7, 8, 13, 16, 31, 32, 40, 64, 67])
@pytest.mark.parametrize("K,N", [(64, 103), (256, 768), (96, 32), (40, 65)])
def test_small_gemm_equals_float64(M, K, N):
    """Every row-block size (8/4/2/1 and their sums) and column remainder, each mode, against
    float64; rows strided (a view with a longer row) as the decoder's last-position slice is."""
    g = torch.Generator().manual_seed(M * 1000 + N)
    x = torch.randn((M, K + 5), generator=g)[:, :K]  # row stride K + 5, unit last stride
    w, b = torch.randn((N, K), generator=g) / K ** 0.5, torch.randn(N, generator=g)
    other = torch.randn((M, N), generator=g)
    panels = kernels.pack_panels(w)
    for mode in kernels.GEMM_MODES:
        arg = other if mode in ("add", "mul") else None
        for bias in (b, None):
            got = kernels.small_gemm(x, panels, N, bias, mode, arg)
            want = kernels.reference_small_gemm(x.double(), w.double(), None if bias is None else bias.double(),
                                                mode, None if arg is None else arg.double())
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_small_gemm_rows_do_not_depend_on_the_batch():
    """A row's result is the same bits whichever rows share the call (and in which block):
    the sum over k runs in one fixed order per output."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn((13, 200), generator=g), torch.randn((300, 200), generator=g)
    panels = kernels.pack_panels(w)
    whole = kernels.small_gemm(x, panels, 300)
    for rows in ([5], [0, 12], list(range(4, 13)), [12, 3, 7]):
        assert torch.equal(kernels.small_gemm(x[rows], panels, 300), whole[rows])


@needs_kernels
def test_small_gemm_refuses_mismatched_shapes():
    panels = kernels.pack_panels(torch.zeros(40, 16))
    with pytest.raises(ValueError, match="against panels"):
        kernels.small_gemm(torch.zeros(2, 17), panels, 40)
    with pytest.raises(ValueError, match="against panels"):
        kernels.small_gemm(torch.zeros(2, 16), panels, 65)  # 2 panels hold 64 columns
    with pytest.raises(ValueError, match="needs `other`"):
        kernels.small_gemm(torch.zeros(2, 16), panels, 40, None, "add")
    with pytest.raises(ValueError, match="takes no `other`"):
        kernels.small_gemm(torch.zeros(2, 16), panels, 40, None, "silu", torch.zeros(2, 40))


def test_small_gemm_only_with_avx512():
    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
    zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16\n"
    assert kernels.gemm_rule(zen3)[0] is False and "oneDNN" in kernels.gemm_rule(zen3)[1]
    assert kernels.gemm_rule(zen4) == (True, "AVX-512F: decoding linears of <= 64 rows on the C kernel")
    here = "avx512f" in Path("/proc/cpuinfo").read_text().split()
    assert kernels.gemm_rule()[0] is here
    assert kernels.gemm_supports(torch.zeros(2, 2)) == (kernels.available() and here)
    assert not kernels.gemm_supports(torch.zeros(2, 2, dtype=torch.float64))
