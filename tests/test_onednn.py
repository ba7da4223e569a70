"""oneDNN linears: each fused form equals its plain torch expression, on both paths."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import r1lab.onednn as onednn
from r1lab import kernels
from r1lab.onednn import Linear


@pytest.fixture(params=["onednn", "torch", "kernel"])
def path(request, monkeypatch):
    """onednn: packed for oneDNN; torch: F.linear; kernel: the few-row C kernel (a rows hint
    of at most `kernels.SMALL_GEMM_ROWS` = 64, on CPUs where `kernels.gemm_rule` takes it)."""
    if request.param == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    if request.param == "kernel" and not kernels.gemm_supports(torch.zeros(1)):
        pytest.skip(f"no few-row C kernel here: {kernels.why_unavailable() or kernels.gemm_rule()[1]}")
    monkeypatch.setattr(onednn, "_usable", None if request.param == "onednn" else False)
    monkeypatch.setattr(onednn, "MIN_PACKED_WEIGHT", 1)  # the test weights are small
    return request.param


def hint(path: str) -> int:
    """The `rows` hint that selects `path` (the kernel takes hints of <= 64 rows)."""
    return 16 if path == "kernel" else 128


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64, 130])  # below, at and above the packing hint
def test_every_form_equals_the_plain_expression(path, bias, rows):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn((48, 40), generator=g)
    b = torch.randn(48, generator=g) if bias else None
    x, h = torch.randn((rows, 40), generator=g), torch.randn((rows, 48), generator=g)
    lin = Linear(w, b, rows=hint(path))
    assert (lin.packed is not None) == (path == "onednn")
    assert (lin.panels is not None) == (path == "kernel")
    assert (lin.weight is None) == (path != "torch")  # packed: one copy of the weight, not two
    assert lin.fused == (path != "torch")
    xw = x.double() @ w.double().t() + (b.double() if bias else 0)  # float64 reference
    tol = dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lin(x).double(), xw, **tol)
    torch.testing.assert_close(lin.silu(x).double(), F.silu(xw), **tol)
    torch.testing.assert_close(lin.add_to(h, x).double(), h.double() + xw, **tol)
    torch.testing.assert_close(lin.times(x, h).double(), xw * h.double(), **tol)


def test_only_large_float32_weights_are_packed(monkeypatch):
    if not onednn.onednn_usable():
        pytest.skip("oneDNN not usable here")
    small, large = torch.randn(128, 512), torch.randn(256, 512)  # 64k and 128k elements
    assert onednn.MIN_PACKED_WEIGHT == 128 * 1024
    many = kernels.SMALL_GEMM_ROWS + 1  # a rows hint past the few-row C kernel's
    assert Linear(small, rows=many).packed is None and Linear(large, rows=many).packed is not None
    assert Linear(large.bfloat16(), rows=many).packed is None


def test_strided_weights_work_and_half_precision_is_not_packed(path):
    big = torch.randn(8, 10)
    w = big[:, 2:6]  # a non-contiguous view, as a slice of a fused weight would be
    x = torch.randn(3, 4)
    torch.testing.assert_close(Linear(w, rows=hint(path))(x), F.linear(x, w), rtol=1e-5, atol=1e-5)
    assert Linear(w.bfloat16(), rows=hint(path)).packed is None  # only float32 is packed
    assert Linear(w.bfloat16(), rows=hint(path)).panels is None
    wide = torch.randn(40, 96)[:, 16:80]  # 64 columns of a wider weight: the kernel's panels too
    torch.testing.assert_close(Linear(wide, rows=hint(path))(x.repeat(1, 16)), F.linear(x.repeat(1, 16), wide),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_probe_accepts_this_build_and_the_switch_turns_it_off():
    code = "import r1lab.onednn as o; print(o.onednn_usable())"
    env = {k: v for k, v in os.environ.items() if k != "R1LAB_ONEDNN"}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True,  # noqa: E731
                                   text=True, check=True).stdout.strip()
    assert run(env) == "True"
    assert run(env | {"R1LAB_ONEDNN": "0"}) == "False"


@pytest.mark.parametrize("wgrad", ["mkl", "onednn"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_with_autograd_equals_f_linear(path, bias, wgrad, monkeypatch):
    """Values and every gradient (input, weight, bias, residual) of `linear` against F.linear,
    including a 3-D input and an in-place edit of the output (as RoPE does to q/k/v); the weight
    gradient by MKL and by oneDNN's backward-weights primitive."""
    monkeypatch.setattr(onednn, "_wgrad", wgrad == "onednn")
    g = torch.Generator().manual_seed(1)
    leaves = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((2, 9, 40), (48, 40), (48,), (2, 9, 48))]
    up = torch.randn((2, 9, 48), generator=g, dtype=torch.float64)
    grads = []
    for fn in ("onednn", "reference"):
        x, w, b, h = (t.float().requires_grad_() for t in leaves)
        if fn == "onednn":
            y = onednn.linear(x, w, b if bias else None, add=h)
        else:
            y = h + F.linear(x, w, b if bias else None)
        before = h.detach().clone()
        y[..., :8] = y[..., :8] * 2  # an in-place edit of the output
        (y * up.float()).sum().backward()
        assert torch.equal(h.detach(), before)  # the residual input is not written to
        grads.append([y.detach()] + [t.grad for t in (x, w, b, h)])
    for got, want in zip(*grads):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_second_order_gradients_equal_the_torch_ones(path):
    """With create_graph the backward is itself differentiated (e.g. a gradient penalty): it
    must record its graph, giving the second-order gradients F.linear gives."""
    g = torch.Generator().manual_seed(2)
    x0, w0 = torch.randn((4, 40), generator=g), torch.randn((48, 40), generator=g)
    out = []
    for fn in (onednn.linear, F.linear):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        (gx,) = torch.autograd.grad(fn(x, w).square().sum(), x, create_graph=True)
        out.append(torch.autograd.grad(gx.square().sum(), [x, w]))
    for got, want in zip(*out):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_weight_gradient_by_onednn_by_hand():
    """g^T x and the bias gradient through oneDNN's backward-weights primitive, by hand:
    g = [[1, 2], [3, 4], [0, -1]], x = [[1, 0, 2], [0, 1, 1], [5, 5, 5]] ->
    g^T x = [[1*1 + 3*0 + 0*5, 1*0 + 3*1 + 0*5, 1*2 + 3*1 + 0*5],
             [2*1 + 4*0 - 1*5, 2*0 + 4*1 - 1*5, 2*2 + 4*1 - 1*5]] = [[1, 3, 5], [-3, -1, 3]];
    bias gradient = column sums of g = [4, 5]."""
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, -1.0]])
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [5.0, 5.0, 5.0]])
    gw, gb = onednn._weight_grad(g, x, torch.zeros(2, 3), True)
    assert torch.equal(gw, torch.tensor([[1.0, 3.0, 5.0], [-3.0, -1.0, 3.0]]))
    assert torch.equal(gb, torch.tensor([4.0, 5.0]))
    assert onednn._weight_grad(g, x, torch.zeros(2, 3), False)[1] is None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_weight_gradient_choice_is_the_cpu_rule_once_and_can_be_forced():
    """Without a config the path is `weight_grad_rule` for this CPU (no timing: the same answer
    whatever the load); the environment override forces it; oneDNN off means MKL."""
    code = ("import r1lab.onednn as o; a = o.weight_grad_by_onednn(); "
            "print(a, o.weight_grad_by_onednn() is a, o.weight_grad_rule(o.cpuinfo_text())[0])")
    env = {k: v for k, v in os.environ.items() if k not in ("R1LAB_ONEDNN", "R1LAB_ONEDNN_WGRAD")}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True,  # noqa: E731
                                   text=True, check=True).stdout.split()
    assert run(env | {"R1LAB_ONEDNN_WGRAD": "1"})[:2] == ["True", "True"]
    assert run(env | {"R1LAB_ONEDNN_WGRAD": "0"})[:2] == ["False", "True"]
    assert run(env | {"R1LAB_ONEDNN_WGRAD": "1", "R1LAB_ONEDNN": "0"})[:2] == ["False", "True"]
    chosen, once, rule = run(env)
    assert once == "True" and chosen == str(rule == "onednn")


def test_the_tuner_checks_and_times_both_paths():
    path, times = onednn.tune_weight_grad(reps=1)
    if not onednn.onednn_usable():
        assert (path, times) == ("mkl", {})
        return
    assert path in ("mkl", "onednn") and set(times) == {"mkl_ms", "onednn_ms"}
    assert all(v > 0 for v in times.values())
    assert path == ("onednn" if times["onednn_ms"] < 0.9 * times["mkl_ms"] else "mkl")


def test_training_linear_leaves_autocast_to_torch():
    """Under autocast (mixed precision) a large fp32 weight does not take the fp32 oneDNN path:
    F.linear runs in bf16, as autocast asks, and the gradient still reaches the fp32 weight."""
    w = torch.randn(512, 512, requires_grad=True)  # >= MIN_PACKED_WEIGHT elements
    x = torch.randn(8, 512)
    assert onednn._eligible(x, w) == onednn.onednn_usable()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn._eligible(x, w)
        y = onednn.linear(x, w)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32
    torch.testing.assert_close(w.grad, x.sum(0).expand(512, 512), rtol=0.02, atol=0.05)


def test_mixed_precision_swiglu_saves_less_and_has_autograds_gradient():
    """In bf16 (autocast's dtype; the C kernel is float32-only) `swiglu` keeps g and u for the
    backward, not silu(g) as well, and its gradients are autograd's up to bf16 rounding."""
    g0 = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g0)
    wg, wu = (torch.randn(48, 32, generator=g0, requires_grad=True) for _ in range(2))
    saved = []

    def run(mixed: bool):
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            if mixed:
                return onednn.swiglu(x, wg, None, wu, None)
            xb = x.bfloat16()  # autograd's own SwiGLU on the same bf16 matmuls
            return F.silu(F.linear(xb, wg.bfloat16())) * F.linear(xb, wu.bfloat16())

    saved.clear()
    ours = run(True)
    n_ours = sum(1 for s in saved if s == (64, 48))
    saved.clear()
    ref = run(False)
    n_ref = sum(1 for s in saved if s == (64, 48))
    assert (n_ours, n_ref) == (2, 3)
    torch.testing.assert_close(ours, ref)
    grad = torch.randn(64, 48, generator=g0).bfloat16()
    got = torch.autograd.grad(ours, (wg, wu), grad)
    want = torch.autograd.grad(ref, (wg, wu), grad)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.03, atol=0.05 * b.abs().max().item())


def test_bf16_decoding_projection_packed_equals_f_linear_in_bf16():
    """The sampler's bf16 projections (`CastLinear`): large weights packed for oneDNN, small ones
    plain; both give F.linear in bf16 (fp32 in and out) up to bf16 rounding."""
    from r1lab.rollout.native import CastLinear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 512, generator=g)
    for out in (512, 64):  # 512 x 512 >= MIN_PACKED_WEIGHT; 64 x 512 below
        w, b = torch.randn(out, 512, generator=g) / 20, torch.randn(out, generator=g)
        lin = CastLinear(w, b, rows=16, dtype=torch.bfloat16)
        assert (lin.onednn is not None) == (w.numel() >= onednn.MIN_PACKED_WEIGHT and onednn.bf16_usable())
        y = lin(x)
        assert y.dtype == torch.float32
        want = F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16()).float()
        torch.testing.assert_close(y, want, rtol=2e-2, atol=2e-2)
        assert (y - F.linear(x, w, b)).abs().max() > 1e-4  # it did run in bf16
