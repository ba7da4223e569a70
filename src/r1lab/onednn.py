"""Float32 linear layers on CPU through oneDNN, with the weight packed once for many calls.

Why: torch's `F.linear` on CPU calls MKL's sgemm, which is tuned for large matrices. A decoding
step multiplies a few dozen rows by each weight (M = the active batch), where MKL reaches 30-80
GFLOP/s on the 2-core benchmark machine. oneDNN's inner-product primitive, given a weight
reordered once into its blocked layout, reaches 100-170 GFLOP/s on the same shapes, with the 4
layers' weights cycling through the cache as in a real step (M = 8 / 40 / 64: 28 -> 96, 65 ->
168, 78 -> 140 GFLOP/s; `benchmarks/profile_ops.py` prints both). It also fuses what follows
the matmul: a residual add (`h + x W^T`), SiLU (`silu(x W^T)`) and a product (`(x W^T) * g`,
SwiGLU's gate), so those cost no extra pass over memory.

The primitive is the one torch's own compiler (inductor) uses for CPU linears:
`torch.ops.mkldnn._linear_pointwise` over a weight from `torch.ops.mkldnn._reorder_linear_weight`.
It is a private op, so everything here checks that it exists and agrees with `F.linear` on a
probe (once per process) and otherwise falls back to `F.linear`. The run's `backend.onednn`
config turns it on or off (`set_enabled`, from `r1lab.models.backend.resolve`); the environment
override `R1LAB_ONEDNN=0` turns it off too.
`Linear` (no autograd) is for inference: the sampler packs each weight once per `generate` call
and uses it for every decoding step. `linear` (autograd) is for training forwards, whose weights
change every step: oneDNN on the plain weight for the forward and the input gradient.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from r1lab import kernels

#: smallest weight (in elements) worth oneDNN at decoding batch sizes. oneDNN costs ~16 us a
#: call whatever the size, MKL ~3-8 us for a tiny matmul, so below this size (512 KB of float32)
#: MKL wins or ties at M <= 16; above it oneDNN wins at every M >= 2 (measured, 2-core machine:
#: [M=8] 128x512 weight 24 vs 35 us, 256x768 58 vs 31 us, 896x1152 202 vs 94 us, MKL vs oneDNN)
MIN_PACKED_WEIGHT = 1 << 17
_usable: bool | None = None
_wgrad: bool | None = None


def onednn_usable() -> bool:
    """True when oneDNN linears run here and match `F.linear` (checked once per process)."""
    global _usable
    if _usable is None:
        _usable = _probe()
    return _usable


def _probe() -> bool:
    if os.environ.get("R1LAB_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    with torch.autocast("cpu", enabled=False):  # the first caller may be a mixed-precision forward
        return _probe_fp32()


def _probe_fp32() -> bool:
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((5, 24), (16, 24), (16,)))
        h = torch.randn((5, 16), generator=g)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 8)
        want = F.linear(x, w, b)
        got = [torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""),
               torch.ops.mkldnn._linear_pointwise(x, packed, b, "swish", [], "") - F.silu(want) + want,
               torch.ops.mkldnn._linear_pointwise.binary(x, h, packed, b, "add") - h,
               torch.ops.mkldnn._linear_pointwise.binary(x, h, packed, b, "mul") / h]
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return all(torch.allclose(y, want, rtol=1e-4, atol=1e-4) for y in got)


_bf16_usable: bool | None = None


def bf16_usable() -> bool:
    """True when oneDNN's linear runs a packed bfloat16 weight here and matches `F.linear` in
    bfloat16 (checked once per process; needs `onednn_usable()`)."""
    global _bf16_usable
    if _bf16_usable is None:
        _bf16_usable = False
        if onednn_usable():
            try:
                with torch.autocast("cpu", enabled=False):
                    g = torch.Generator().manual_seed(0)
                    x, w, b = (torch.randn(s, generator=g).bfloat16() for s in ((5, 64), (48, 64), (48,)))
                    got = torch.ops.mkldnn._linear_pointwise(
                        x, torch.ops.mkldnn._reorder_linear_weight(w, 8), b, "none", [], "")
                    _bf16_usable = bool(torch.allclose(got.float(), F.linear(x, w, b).float(),
                                                       rtol=2e-2, atol=2e-2))
            except (RuntimeError, AttributeError, NotImplementedError):
                _bf16_usable = False
    return _bf16_usable


class Linear:
    """`x W^T + b` for a fixed weight, with the fused variants a decoder needs.

    On CPU in float32 (when `onednn_usable()`), for weights of at least `MIN_PACKED_WEIGHT`
    elements, the weight is packed for oneDNN at construction (`rows`: the typical number of
    input rows, a layout hint; any row count works); elsewhere (GPU, half precision, small
    weights, no oneDNN) every method is the plain torch expression. The weight must
    not change while this object is in use: build a new one after an optimiser step.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, rows: int = 64) -> None:
        self.weight, self.bias = weight, bias
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.packed = self.panels = None
        if rows <= kernels.SMALL_GEMM_ROWS and kernels.gemm_supports(weight):
            # few rows (a decoding step of a group or two): the C kernel, any weight size
            self.panels = kernels.pack_panels(weight)
            self.weight = None
        elif (weight.device.type == "cpu" and weight.dtype == torch.float32
                and weight.numel() >= MIN_PACKED_WEIGHT and onednn_usable()):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, rows))
            self.weight = None  # the packed copy is all that is used: hold one copy, not two

    @property
    def fused(self) -> bool:
        """Whether SiLU and the product come fused into the matmul (`silu`, `times`)."""
        return self.packed is not None or self.panels is not None

    def _small(self, x: Tensor, mode: str = "none", other: Tensor | None = None) -> Tensor:
        if x.dim() == 2:  # a decoding step's rows: no reshapes (they cost more than the matmul)
            return kernels.small_gemm(x, self.panels, self.out_features, self.bias, mode, other)
        y = kernels.small_gemm(x.reshape(-1, self.in_features), self.panels, self.out_features,
                               self.bias, mode, None if other is None else other.reshape(-1, self.out_features))
        return y.view(*x.shape[:-1], self.out_features)

    def __call__(self, x: Tensor) -> Tensor:
        if self.panels is not None:
            return self._small(x)
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def silu(self, x: Tensor) -> Tensor:
        """silu(x W^T + b)."""
        if self.panels is not None:
            return self._small(x, "silu")
        if self.packed is None:
            return F.silu(F.linear(x, self.weight, self.bias))
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "swish", [], "")

    def add_to(self, h: Tensor, x: Tensor) -> Tensor:
        """h + x W^T + b (a residual connection), h [M, out] contiguous."""
        if self.panels is not None:
            return self._small(x, "add", h)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, h, self.packed, self.bias, "add")
        if self.bias is None:
            return torch.addmm(h, x, self.weight.t())
        return h + F.linear(x, self.weight, self.bias)

    def times(self, x: Tensor, other: Tensor) -> Tensor:
        """(x W^T + b) * other, other [M, out] contiguous."""
        if self.panels is not None:
            return self._small(x, "mul", other)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "mul")
        return F.linear(x, self.weight, self.bias) * other


def set_enabled(enabled: bool) -> bool:
    """Turn oneDNN linears off (every linear is `F.linear`) or on (probed if not yet).
    Returns `onednn_usable()`. Called by `r1lab.models.backend.resolve`."""
    global _usable, _wgrad, _bf16_usable
    _usable = _probe() if enabled else False
    _bf16_usable = None
    if not _usable:
        _wgrad = False
    return _usable


def set_weight_grad(path: str) -> bool:
    """Route training linears' weight gradients through "onednn" or "mkl" (when oneDNN is
    usable; else MKL). Returns whether oneDNN takes them."""
    global _wgrad
    if path not in ("onednn", "mkl"):
        raise ValueError(f"weight-gradient path {path!r}: expected 'onednn' or 'mkl'")
    _wgrad = path == "onednn" and onednn_usable()
    return _wgrad


def weight_grad_rule(cpuinfo: str) -> tuple[str, str]:
    """The default weight-gradient path for a CPU, from /proc/cpuinfo's text: ("onednn" | "mkl",
    why). A fixed rule, not a timing, so the machine's load cannot change the numerics.

    MKL runs its AVX-512 code on Intel CPUs but only its AVX2 path on AMD ones; oneDNN runs
    AVX-512 on both. On AMD Zen 5 (CPU family 26, AVX-512 at full width) oneDNN's
    backward-weights primitive was 1.5x MKL there (~300 vs ~200 GFLOP/s with its layout
    conversions, 2 cores; packed fwd+bwd 305 -> 257 ms); on the earlier AMD machines (Zen 4 and
    older, AVX-512 double-pumped or absent) and on Intel, MKL was as fast or faster.

    >>> weight_grad_rule("vendor_id : AuthenticAMD\ncpu family : 26\nflags : fpu avx2 avx512f")
    ('onednn', 'AuthenticAMD family 26 with avx512f: MKL would take its AVX2 path')
    >>> weight_grad_rule("vendor_id : GenuineIntel\ncpu family : 6\nflags : avx2 avx512f")[0]
    'mkl'
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    vendor, flags = fields.get("vendor_id", "?"), fields.get("flags", "").split()
    try:
        family = int(fields.get("cpu family", "0"))
    except ValueError:
        family = 0
    if vendor == "AuthenticAMD" and family >= 26 and "avx512f" in flags:
        return "onednn", f"{vendor} family {family} with avx512f: MKL would take its AVX2 path"
    return "mkl", f"{vendor} family {family}: MKL runs its best path here"


def cpuinfo_text() -> str:
    """/proc/cpuinfo's text ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def weight_grad_by_onednn() -> bool:
    """Whether a training linear's weight gradient (g^T x) goes through oneDNN's
    backward-weights primitive rather than MKL's sgemm. Set by `set_weight_grad` (the run's
    `backend.onednn_wgrad`, see `r1lab.models.backend`); until then `weight_grad_rule` for
    this CPU, or the override `R1LAB_ONEDNN_WGRAD=1` / `=0` (oneDNN / MKL). Never timed
    implicitly: `tune_weight_grad` is the explicit autotuner."""
    global _wgrad
    if _wgrad is None:
        forced = os.environ.get("R1LAB_ONEDNN_WGRAD")
        path = {"1": "onednn", "0": "mkl"}.get(forced or "", forced)
        if path not in ("onednn", "mkl"):
            path = weight_grad_rule(cpuinfo_text())[0]
        _wgrad = path == "onednn" and onednn_usable()
    return _wgrad


def _weight_grad(g: Tensor, x: Tensor, w: Tensor, bias: bool) -> tuple[Tensor, Tensor | None]:
    """(g^T x, g summed over rows or None) through oneDNN: g [M, out], x [M, in], w [out, in]."""
    gw, gb = torch.ops.aten.mkldnn_linear_backward_weights(g.to_mkldnn(), x.to_mkldnn(), w, bias)
    return gw, (gb if bias else None)


def tune_weight_grad(reps: int = 4) -> tuple[str, dict[str, float]]:
    """The explicit autotuner (`backend.onednn_wgrad: tune`): time MKL's g^T x against oneDNN's
    backward-weights primitive on a training-sized shape ([2048, 1024]^T x [2048, 256]),
    interleaved, best of `reps` each (~50 ms), after checking oneDNN's result. Returns
    ("onednn" | "mkl", {"mkl_ms": .., "onednn_ms": ..}); oneDNN only when 10% faster. The
    choice depends on the machine's load at that moment: the caller records it."""
    import time

    if not onednn_usable():
        return "mkl", {}
    try:
        gen = torch.Generator().manual_seed(0)
        g, x, w = (torch.randn(s, generator=gen) for s in ((2048, 1024), (2048, 256), (1024, 256)))
        want = g.t() @ x
        got, gb = _weight_grad(g, x, w, True)
        if not (torch.allclose(got, want, rtol=1e-4, atol=1e-3)
                and torch.allclose(gb, g.sum(0), rtol=1e-4, atol=1e-3)):
            return "mkl", {}
        best = {"mkl": float("inf"), "onednn": float("inf")}
        for _ in range(reps):  # interleaved: load changes hit both
            for name, fn in (("mkl", lambda: g.t() @ x), ("onednn", lambda: _weight_grad(g, x, w, False))):
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
    except (RuntimeError, AttributeError, NotImplementedError):
        return "mkl", {}
    times = {f"{k}_ms": round(v * 1e3, 3) for k, v in best.items()}
    return ("onednn" if best["onednn"] < 0.9 * best["mkl"] else "mkl"), times


def _eligible(x: Tensor, weight: Tensor) -> bool:
    """oneDNN for a training matmul: CPU float32 weights of at least `MIN_PACKED_WEIGHT`
    elements. Smaller ones stay with MKL: oneDNN builds a kernel for every new row count (the
    packed token count changes every step), which a small matmul does not repay (the demo's
    pre-training, 128-wide model: 52 s with MKL, 64 s with oneDNN). Not under autocast (mixed
    precision): there `F.linear` runs in the autocast dtype (bfloat16 on AMX)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and x.dtype == torch.float32 and weight.numel() >= MIN_PACKED_WEIGHT
            and not torch.is_autocast_enabled("cpu") and onednn_usable())


def swiglu(x: Tensor, gate_w: Tensor, gate_b: Tensor | None, up_w: Tensor,
           up_b: Tensor | None) -> Tensor:
    """silu(x Wg^T + bg) * (x Wu^T + bu), a SwiGLU MLP's input to its down projection.

    With no gradient to record (a reference model's forward) and oneDNN usable, SiLU is fused
    into the gate's matmul and the product into the up projection's: no elementwise passes over
    the [tokens, intermediate] activations. Otherwise (training) it is two `linear`s and the
    gate: on CPU in float32 `r1lab.kernels.swiglu` (one pass forward, one backward), elsewhere
    torch's elementwise ops.
    """
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, gate_w, gate_b, up_w, up_b))
    if grad or not _eligible(x, gate_w):
        g, u = linear(x, gate_w, gate_b), linear(x, up_w, up_b)
        if kernels.supports(g, u):
            return kernels.swiglu(g, u)
        if grad and g.dtype in (torch.bfloat16, torch.float16):
            return _SwiGLURecompute.apply(g, u)
        return F.silu(g) * u
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    g = torch.ops.mkldnn._linear_pointwise(x2, gate_w.contiguous(), gate_b, "swish", [], "")
    y = torch.ops.mkldnn._linear_pointwise.binary(x2, g, up_w.contiguous(), up_b, "mul")
    return y.view(*x.shape[:-1], up_w.shape[0])


class _SwiGLURecompute(torch.autograd.Function):
    """silu(g) * u that saves only g and u (autograd's own also keeps silu(g)): one
    [tokens, intermediate] tensor less per layer in a mixed-precision forward, where the C
    kernel (float32 only) does not run. 4M Qwen2 at 16 x 1,024 tokens: 128 of 1,068 MiB saved.
    The backward recomputes sigmoid(g), in place where it can (3 transient buffers)."""

    @staticmethod
    def forward(ctx, g: Tensor, u: Tensor) -> Tensor:
        ctx.save_for_backward(g, u)
        return F.silu(g) * u

    @staticmethod
    def backward(ctx, grad: Tensor):
        g, u = ctx.saved_tensors
        s = torch.sigmoid(g)
        du = (g * s).mul_(grad)  # d/du = silu(g)
        dg = (1 - s).mul_(g).add_(1).mul_(s).mul_(grad).mul_(u)  # silu'(g) = s (1 + g (1 - s))
        return dg, du


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None,
           add: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` (plus `add`, a residual of the output's shape), with autograd.

    On CPU in float32, for weights of at least `MIN_PACKED_WEIGHT` elements (see `_eligible`),
    the forward and the input gradient run through oneDNN (measured on the
    training shapes of `bench_vs_trl.py`, [3400, 256|1024] x [256|1024, 256..1024]: forward
    8-22% and input gradient 8-12% faster than MKL) and the residual add is fused into the
    forward; the weight gradient stays with MKL (faster there). Elsewhere it is `F.linear`.
    """
    if not _eligible(x, weight):
        y = F.linear(x, weight, bias)
        return y if add is None else add + y
    lead = x.shape[:-1]
    other = None if add is None else add.reshape(-1, weight.shape[0])
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, other)
    return y.view(*lead, weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    """2-D x [M, in] -> [M, out]; the autograd of `linear`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, add: Tensor | None) -> Tensor:
        x, w = x.contiguous(), weight.contiguous()
        if add is None:
            y = torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
        else:
            y = torch.ops.mkldnn._linear_pointwise.binary(x, add.contiguous(), w, bias, "add")
        ctx.save_for_backward(x, w)
        ctx.flags = (bias is not None, add is not None)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        g = grad.contiguous()
        gx = gw = gb = gadd = None
        if ctx.needs_input_grad[0]:  # g W, as oneDNN's g W'^T with W' = W^T
            if torch.is_grad_enabled():  # create_graph (double backward): torch ops record it
                gx = g @ w
            else:
                gx = torch.ops.mkldnn._linear_pointwise(g, w.t(), None, "none", [], "")  # a view: no copy
        want_gb = ctx.flags[0] and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] and not torch.is_grad_enabled() and weight_grad_by_onednn():
            gw, gb = _weight_grad(g, x, w, want_gb)
        elif ctx.needs_input_grad[1]:
            gw = g.t() @ x
        if want_gb and gb is None:
            gb = g.sum(0)
        if ctx.flags[1] and ctx.needs_input_grad[3]:
            gadd = grad
        return gx, gw, gb, gadd
