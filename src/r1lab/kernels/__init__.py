"""Small C kernels for the CPU decoding loop, compiled with the machine's C compiler at first use.

Why: a decoding step of a small model is dozens of tiny torch operations per layer, and the
one-query attention among them reads the KV cache through batched GEMVs at a fraction of the
memory bandwidth. `decode_attention.c` does RoPE, the cache write and the attention of one layer
in one pass (see that file). A kernel is plain C with OpenMP, built by `cc -O3 -march=native
-fopenmp` into a cache folder (`$R1LAB_KERNEL_CACHE`, else `$XDG_CACHE_HOME/r1lab/kernels`,
else `~/.cache/r1lab/kernels`), keyed by the source, the flags, the compiler and the CPU, and
loaded with ctypes. It shares torch's OpenMP runtime (the same `libgomp.so.1`), so its threads
are torch's threads.

Everything is optional: with no compiler, a failed build, a result that disagrees with the
torch expression on a probe (checked once per process), `backend.kernels: off` in the run's
config (`set_enabled`, from `r1lab.models.backend.resolve`) or the override `R1LAB_KERNELS=0`,
`available()` is False and callers use their torch path. The reason is logged once
(`why_unavailable()`).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(f)
           for f in ("decode_attention.c", "causal_attention.c", "elementwise.c", "small_gemm.c")]
#: -ffast-math lets gcc vectorise expf (glibc's libmvec); it is given to the compile step only,
#: because linking a shared library with it (gcc < 13) would switch the whole process to
#: flush-to-zero floats
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-c"]
LINK_FLAGS = ["-shared", "-fopenmp"]
LIBS = ["-lmvec", "-lm"]  # glibc's vector math (expf on 16 floats), then libm

_lib: ctypes.CDLL | None = None
_why: str | None = None
_loaded = False
#: reduce the RMSNorm weight gradient in a fixed order (`set_deterministic`)
_deterministic = False


def set_enabled(enabled: bool) -> bool:
    """Turn the kernels off (callers take their torch paths) or back on (built, loaded and
    probed if not yet). Returns `available()`. Called by `r1lab.models.backend.resolve`."""
    global _lib, _why, _loaded
    if not enabled:
        _lib, _why, _loaded = None, "backend.kernels: off", True
    elif _lib is None:  # never loaded, or turned off: load (the env override still applies)
        _loaded = False
    return available()


def set_deterministic(flag: bool) -> None:
    """With `flag`, the RMSNorm weight gradient is summed over rows by torch (a fixed order)
    instead of per-thread partial sums added in whatever order the threads finish (which
    changes the last bits from run to run with more than 2 threads)."""
    global _deterministic
    _deterministic = flag


def available() -> bool:
    """True when the kernels are built, loaded and agree with torch here (once per process)."""
    _load()
    return _lib is not None


def why_unavailable() -> str | None:
    """None when `available()`, else the reason."""
    _load()
    return _why


def cache_dir() -> Path:
    if os.environ.get("R1LAB_KERNEL_CACHE"):
        return Path(os.environ["R1LAB_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "r1lab" / "kernels"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [x for x in lines if x.startswith(("model name", "flags"))][:2]
    return platform.machine() + "\n".join(keep)


def build(cc: str | None = None) -> Path:
    """Compile the kernels (or find them in the cache) and return the shared library's path.
    Raises RuntimeError with the compiler's message when the build fails."""
    cc = cc or os.environ.get("CC", "cc")
    exe = shutil.which(cc)
    if exe is None:
        raise RuntimeError(f"no C compiler: {cc!r} is not on PATH (set CC)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([*(src.read_text() for src in SOURCES), *COMPILE_FLAGS, *LINK_FLAGS, *LIBS, version,
                                    _cpu_id()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"r1lab_kernels_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objs = [str(Path(tmp) / f"{src.stem}.o") for src in SOURCES]
        lib = Path(tmp) / "k.so"
        cmds = [[exe, *COMPILE_FLAGS, str(src), "-o", obj] for src, obj in zip(SOURCES, objs)]
        for cmd in [*cmds, [exe, *LINK_FLAGS, *objs, "-o", str(lib), *LIBS]]:
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr.strip()[-2000:]}")
        os.replace(lib, target)  # atomic: concurrent builders never see half a file
    return target


def _load() -> None:
    global _lib, _why, _loaded
    if _loaded:
        return
    _loaded = True
    if os.environ.get("R1LAB_KERNELS", "1") == "0":
        _why = "R1LAB_KERNELS=0"
        return
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as e:
        _why = f"the C kernels could not be built or loaded: {e}"
        log.warning("r1lab: %s; decoding uses torch operations instead", _why)
        return
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    signatures = {
        "r1_decode_attention": [p, i64, p, p, p, p, p, i64, i64, p, i64, p, i32, i32, i32, i32,
                                i32, f32],
        "r1_causal_attention_fwd": [p, p, p, p, p, p, i32, i32, i32, i32, i32, f32],
        "r1_causal_attention_bwd": [p, p, p, p, p, p, p, p, i32, i32, i32, i32, i32, f32],
        "r1_rms_norm_fwd": [p, p, f32, p, p, i64, i32],
        "r1_rms_norm_bwd": [p, p, p, p, p, p, i64, i32],
        "r1_swiglu_fwd": [p, p, p, i64],
        "r1_swiglu_bwd": [p, p, p, p, p, i64],
        "r1_small_gemm": [p, i64, p, p, i64, i64, i64, i32, p, i64, p, i64],
    }
    for name, args in signatures.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, None
    _lib = lib
    # callers may be in no-grad decoding, in a mixed-precision forward (autocast), or inside a
    # gradient checkpoint (whose saved-tensor hooks must not see the probe's own autograd)
    with (torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False),
          torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)):
        why = _probe()
    if why is not None:
        _lib, _why = None, why
        log.warning("r1lab: the C decode kernel disagrees with torch (%s); not used", why)


def decode_attention(qkv: Tensor, cos: Tensor, ssin: Tensor, pos: Tensor, k_cache: Tensor,
                     v_cache: Tensor, bias: Tensor, length: int, heads: int, scale: float) -> Tensor:
    """One decoding step of one layer: RoPE on the new q and k, k and v written into the cache
    at position `length`, then attention of the one query over positions 0..length.

    qkv [A, (H + 2 Hkv) D] (rows contiguous); cos/ssin [P, D] tables (`r1lab.models.ops.signed_sin`);
    pos [A] int64; k_cache/v_cache [A, Hkv, max_len, D] (views with unit stride on the last two
    dims); bias [A, >= length + 1] with unit last stride. Returns [A, H D]. Call only when
    `available()`; `reference_decode_attention` is the same computation in torch.
    """
    A, Hkv, _, D = k_cache.shape
    out = qkv.new_empty((A, heads * D))
    _lib.r1_decode_attention(
        qkv.data_ptr(), qkv.stride(0), cos.data_ptr(), ssin.data_ptr(), pos.data_ptr(),
        k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0), k_cache.stride(1),
        bias.data_ptr(), bias.stride(0), out.data_ptr(), A, heads, Hkv, D, length, scale)
    return out


def supports(*tensors: Tensor) -> bool:
    """Whether the kernels take these tensors: float32 on the CPU, and `available()`. (The
    layouts `decode_attention` asks for are the caller's to keep.)"""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and available()


def causal_supports(x: Tensor, head_dim: int) -> bool:
    """Whether `causal_attention` takes heads of `head_dim` for tensors like x (the kernel
    works on 16-float vectors: head dims that are multiples of 16, up to 256) on this CPU
    (`causal_rule`)."""
    return head_dim % 16 == 0 and head_dim <= 256 and supports(x) and causal_rule()[0]


_causal: tuple[bool, str] | None = None


def causal_rule(cpuinfo: str | None = None) -> tuple[bool, str]:
    """(whether the packed training attention runs on the C kernel here, why), by a fixed rule
    on the CPU's flags, never by timing: only with AVX-512F. The kernel keeps 4 queries x D/16
    16-float accumulators (16 for D = 64), one zmm register each under AVX-512 (32 of them);
    under AVX2 each is two ymm of 16, so it spills, and torch's path (batched matmuls, SDPA)
    is faster: forward + backward 2-9x faster at 64-1,040 positions on Zen 3 (AVX2).
    `cpuinfo`: /proc/cpuinfo's text (default: this machine's, read once)."""
    global _causal
    if cpuinfo is None and _causal is not None:
        return _causal
    text = cpuinfo if cpuinfo is not None else _read_cpuinfo()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    rule = ((True, "AVX-512F: causal attention on the C kernel") if "avx512f" in flags else
            (False, "no AVX-512F: causal attention in torch (the kernel is register-blocked for "
                    "AVX-512)"))
    if cpuinfo is None:
        _causal = rule
    return rule


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


#: the decoding linears take `small_gemm` at up to this many rows (`gemm_rule`); above it,
#: oneDNN's kernels are as fast (Zen 4, 2 threads, a decoding step's weights cycling: the kernel
#: 1.2-1.4x oneDNN at 8-32 rows, 1.0-1.1x at 64-96, 0.95-1.05x at 128-256)
SMALL_GEMM_ROWS = 64
#: `small_gemm`'s epilogues
GEMM_MODES = {"none": 0, "silu": 1, "add": 2, "mul": 3}
_gemm: tuple[bool, str] | None = None


def gemm_rule(cpuinfo: str | None = None) -> tuple[bool, str]:
    """(whether decoding linears of up to `SMALL_GEMM_ROWS` rows run on `small_gemm` here, why),
    by a fixed rule on the CPU's flags, never by timing: only with AVX-512F, where its 16
    accumulators of 16 floats are 16 of the 32 zmm registers (under AVX2 they would be 32 ymm
    pairs and spill)."""
    global _gemm
    if cpuinfo is None and _gemm is not None:
        return _gemm
    text = cpuinfo if cpuinfo is not None else _read_cpuinfo()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    rule = ((True, f"AVX-512F: decoding linears of <= {SMALL_GEMM_ROWS} rows on the C kernel")
            if "avx512f" in flags else
            (False, "no AVX-512F: decoding linears on oneDNN / MKL"))
    if cpuinfo is None:
        _gemm = rule
    return rule


def gemm_supports(weight: Tensor) -> bool:
    """Whether `small_gemm` takes this weight for few-row products here: float32 on the CPU,
    the kernels available and `gemm_rule` true."""
    return supports(weight) and gemm_rule()[0]


def pack_panels(weight: Tensor) -> Tensor:
    """`weight` [N, K] in `small_gemm`'s layout: panels of 32 output columns, [ceil(N/32), K, 32],
    the last one zero-padded."""
    N, K = weight.shape
    w = weight.detach().float()
    full, rest = divmod(N, 32)
    panels = w.new_empty((full + (rest > 0), K, 32))
    panels[:full] = w[:full * 32].reshape(full, 32, K).transpose(1, 2)  # one strided copy
    if rest:
        panels[full].zero_()
        panels[full, :, :rest] = w[full * 32:].t()
    return panels


def small_gemm(x: Tensor, panels: Tensor, n_out: int, bias: Tensor | None = None,
               mode: str = "none", other: Tensor | None = None) -> Tensor:
    """x [M, K] (unit last stride) times the weight packed by `pack_panels` (N = `n_out`
    columns), plus bias, then the epilogue `mode`: "none", "silu" (silu(x W^T + b)), "add"
    (other + x W^T + b) or "mul" ((x W^T + b) * other), other [M, N] with unit last stride.
    Returns a new [M, N] tensor. Call only when `gemm_supports`; `reference_small_gemm` is
    the same in torch."""
    if x.dim() != 2 or x.stride(1) != 1:
        x = x.reshape(-1, x.shape[-1]).contiguous()
    M, K = x.shape
    if panels.shape[1] != K or panels.shape[0] * 32 < n_out:
        raise ValueError(f"x [{M}, {K}] against panels {tuple(panels.shape)} for {n_out} outputs")
    code = GEMM_MODES[mode]
    if (code >= 2) != (other is not None):
        raise ValueError(f"mode {mode!r} {'needs' if code >= 2 else 'takes no'} `other`")
    if other is not None and (other.shape != (M, n_out) or other.stride(1) != 1):
        other = other.reshape(M, n_out).contiguous()
    bias = None if bias is None else bias.contiguous()
    y = x.new_empty((M, n_out))
    _lib.r1_small_gemm(x.data_ptr(), x.stride(0), panels.data_ptr(),
                       None if bias is None else bias.data_ptr(), M, n_out, K, code,
                       None if other is None else other.data_ptr(),
                       0 if other is None else other.stride(0), y.data_ptr(), y.stride(0))
    return y


def reference_small_gemm(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                         mode: str = "none", other: Tensor | None = None) -> Tensor:
    """`small_gemm` in torch operations."""
    y = torch.nn.functional.linear(x, weight, bias)
    return {"none": lambda: y, "silu": lambda: torch.nn.functional.silu(y),
            "add": lambda: other + y, "mul": lambda: y * other}[mode]()


def reference_decode_attention(qkv: Tensor, cos: Tensor, ssin: Tensor, pos: Tensor,
                               k_cache: Tensor, v_cache: Tensor, bias: Tensor, length: int,
                               heads: int, scale: float) -> Tensor:
    """`decode_attention` in torch operations (the probe's and the tests' reference)."""
    A, Hkv, _, D = k_cache.shape
    H, half = heads, D // 2
    x = qkv.view(A, H + 2 * Hkv, D)
    c, s = cos[pos][:, None], ssin[pos][:, None]  # [A, 1, D]
    rot = x[:, : H + Hkv] * c + torch.cat([x[:, : H + Hkv, half:], x[:, : H + Hkv, :half]], -1) * s
    k_cache[:, :, length] = rot[:, H:]
    v_cache[:, :, length] = x[:, H + Hkv:]
    k, v = k_cache[:, :, : length + 1], v_cache[:, :, : length + 1]  # [A, Hkv, S, D]
    q = rot[:, :H].view(A, Hkv, H // Hkv, D)
    scores = q @ k.transpose(-1, -2) * scale + bias[:, None, None, : length + 1]  # [A, Hkv, G, S]
    o = torch.softmax(scores, -1) @ v  # [A, Hkv, G, D]
    return o.reshape(A, H * D)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lens: Tensor, cos: Tensor, ssin: Tensor, heads: int,
                kv_heads: int, scale: float) -> Tensor:
        R, S, W = x.shape
        D = W // (heads + 2 * kv_heads)
        out = x.new_empty((R, S, heads * D))
        lse = x.new_empty((R, heads, S)) if ctx.needs_input_grad[0] else None
        _lib.r1_causal_attention_fwd(x.data_ptr(), lens.data_ptr(), cos.data_ptr(),
                                     ssin.data_ptr(), out.data_ptr(),
                                     None if lse is None else lse.data_ptr(), R, S, heads,
                                     kv_heads, D, scale)
        if lse is not None:
            ctx.save_for_backward(x, lens, cos, ssin, out, lse)
        ctx.shape = (R, S, heads, kv_heads, D, scale)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, lens, cos, ssin, out, lse = ctx.saved_tensors
        R, S, heads, kv_heads, D, scale = ctx.shape
        none = (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            ref = reference_causal_attention(x, lens, heads, kv_heads, scale, cos, ssin)
            return torch.autograd.grad(ref, x, dout, create_graph=True)[0], *none
        dout = dout.contiguous()
        dx = torch.empty_like(x)
        _lib.r1_causal_attention_bwd(x.data_ptr(), lens.data_ptr(), cos.data_ptr(),
                                     ssin.data_ptr(), out.data_ptr(), lse.data_ptr(),
                                     dout.data_ptr(), dx.data_ptr(), R, S, heads, kv_heads, D,
                                     scale)
        return dx, *none


def causal_attention(x: Tensor, lens: Tensor, heads: int, kv_heads: int, scale: float,
                     cos: Tensor | None = None, ssin: Tensor | None = None) -> Tensor:
    """Causal self-attention within each of R blocks, RoPE included, with autograd (a
    `create_graph` backward runs `reference_causal_attention`, so higher-order gradients are
    right, not fast).

    x [R, S, (H + 2 Hkv) D]: each position's q heads, then k heads, then v heads, before RoPE;
    block position t has position id t and is rotated with row t of cos/ssin [>= S, D]
    (`r1lab.models.ops.signed_sin`; None: no rotation). lens [R] int64: block r's real
    positions are 0 .. lens[r]-1, the rest padding (output 0, gradient 0). Returns [R, S, H D].
    Query head h uses kv head h // (H / Hkv). Call only when `causal_supports(x, D)`.
    """
    R, S, W = x.shape
    D = W // (heads + 2 * kv_heads)
    if cos is None:
        cos, ssin = x.new_ones((S, D)), x.new_zeros((S, D))
    if cos.shape[0] < S or ssin.shape[0] < S:
        raise ValueError(f"RoPE tables of {cos.shape[0]} positions for blocks of {S}")
    return _CausalAttention.apply(x.contiguous(), lens.to(torch.long).contiguous(),
                                  cos.contiguous(), ssin.contiguous(), heads, kv_heads, scale)


def reference_causal_attention(x: Tensor, lens: Tensor, heads: int, kv_heads: int,
                               scale: float, cos: Tensor | None = None,
                               ssin: Tensor | None = None) -> Tensor:
    """`causal_attention` in torch operations (the tests' reference, differentiable)."""
    R, S, W = x.shape
    H, Hkv = heads, kv_heads
    D = W // (H + 2 * Hkv)
    q, k, v = x.view(R, S, H + 2 * Hkv, D).transpose(1, 2).split([H, Hkv, Hkv], 1)
    if cos is not None:  # rope(y)[d] = y[d] cos[d] + y[(d + D/2) % D] ssin[d], position = t
        c, s = cos[:S].to(x.dtype), ssin[:S].to(x.dtype)
        q, k = ((y * c + torch.cat([y[..., D // 2:], y[..., : D // 2]], -1) * s) for y in (q, k))
    k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)  # [R, H, S, D]
    pos = torch.arange(S, device=x.device)
    real = pos[None] < lens[:, None]  # [R, S]
    allowed = (pos[None, :] <= pos[:, None])[None] & real[:, None, :]  # [R, S(query), S(key)]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    o = torch.softmax(scores, -1).nan_to_num(0.0) @ v  # padding queries: no keys -> 0
    o = o * real[:, None, :, None]
    return o.transpose(1, 2).reshape(R, S, H * D)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
        d = x.shape[-1]
        n = x.numel() // d
        y = torch.empty_like(x)
        rstd = x.new_empty(n) if any(ctx.needs_input_grad) else None
        _lib.r1_rms_norm_fwd(x.data_ptr(), None if weight is None else weight.data_ptr(), eps,
                             y.data_ptr(), None if rstd is None else rstd.data_ptr(), n, d)
        if rstd is not None:
            ctx.save_for_backward(x, weight, rstd)
            ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            ref = reference_rms_norm(x, weight, ctx.eps)
            inputs = (x,) if weight is None else (x, weight)
            grads = torch.autograd.grad(ref, inputs, dy, create_graph=True)
            return grads[0], (grads[1] if weight is not None else None), None
        d = x.shape[-1]
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        want_dw = weight is not None and ctx.needs_input_grad[1]
        dw = torch.empty_like(weight) if want_dw and not _deterministic else None
        _lib.r1_rms_norm_bwd(x.data_ptr(), None if weight is None else weight.data_ptr(),
                             rstd.data_ptr(), dy.data_ptr(), dx.data_ptr(),
                             None if dw is None else dw.data_ptr(), x.numel() // d, d)
        if want_dw and dw is None:  # deterministic: torch's reduction over rows, fixed order
            dw = (dy.view(-1, d) * x.view(-1, d) * rstd[:, None]).sum(0).view_as(weight)
        return dx, dw, None


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm over the last dim, `x / sqrt(mean(x^2) + eps) * weight` (no weight: unscaled),
    one pass forward and one backward. Call only when `supports(x)`."""
    x, weight = x.contiguous(), None if weight is None else weight.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight is not None and weight.requires_grad):
        return _RMSNorm.apply(x, weight, eps)
    y = torch.empty_like(x)  # no graph to record (decoding): the kernel alone
    _lib.r1_rms_norm_fwd(x.data_ptr(), None if weight is None else weight.data_ptr(), eps,
                         y.data_ptr(), None, x.numel() // x.shape[-1], x.shape[-1])
    return y


def reference_rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: Tensor, u: Tensor) -> Tensor:
        a = torch.empty_like(g)
        _lib.r1_swiglu_fwd(g.data_ptr(), u.data_ptr(), a.data_ptr(), g.numel())
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(g, u)
        return a

    @staticmethod
    def backward(ctx, da: Tensor):
        g, u = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return torch.autograd.grad(reference_swiglu(g, u), (g, u), da, create_graph=True)
        da = da.contiguous()
        dg, du = torch.empty_like(g), torch.empty_like(u)
        _lib.r1_swiglu_bwd(g.data_ptr(), u.data_ptr(), da.data_ptr(), dg.data_ptr(),
                           du.data_ptr(), g.numel())
        return dg, du


def swiglu(g: Tensor, u: Tensor) -> Tensor:
    """silu(g) * u in one pass forward and one backward. Call only when `supports(g, u)`."""
    if g.shape != u.shape:
        raise ValueError(f"gate {tuple(g.shape)} and up {tuple(u.shape)} differ in shape")
    return _SwiGLU.apply(g.contiguous(), u.contiguous())


def reference_swiglu(g: Tensor, u: Tensor) -> Tensor:
    return torch.nn.functional.silu(g) * u


def _probe() -> str | None:
    """None when the kernels match their torch references on small GQA cases."""
    g = torch.Generator().manual_seed(0)
    A, H, Hkv, D, L, n = 3, 4, 2, 8, 6, 4
    qkv = torch.randn((A, (H + 2 * Hkv) * D), generator=g)
    cos, ssin = torch.randn((L, D), generator=g), torch.randn((L, D), generator=g)
    pos = torch.tensor([4, 3, 5])
    cache = torch.randn((2, A, Hkv, L, D), generator=g)
    bias = torch.zeros((A, L))
    bias[1, :2] = torch.finfo(torch.float32).min
    ref_cache = cache.clone()
    want = reference_decode_attention(qkv, cos, ssin, pos, ref_cache[0], ref_cache[1], bias, n, H, 0.3)
    got = decode_attention(qkv, cos, ssin, pos, cache[0], cache[1], bias, n, H, 0.3)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        return f"decode attention differs by {(got - want).abs().max().item():.3g}"
    if not torch.allclose(cache, ref_cache, rtol=1e-5, atol=1e-6):
        return "the decode kernel's cache write differs"
    D = 16  # the causal kernel's head dims are multiples of 16
    x = torch.randn((2, 6, (H + 2 * Hkv) * D), generator=g, requires_grad=True)
    lens, dout = torch.tensor([6, 3]), torch.randn((2, 6, H * D), generator=g)
    cos, ssin = torch.randn((6, D), generator=g), torch.randn((6, D), generator=g)
    want = reference_causal_attention(x, lens, H, Hkv, 0.3, cos, ssin)
    (want_dx,) = torch.autograd.grad(want, x, dout)
    got = causal_attention(x, lens, H, Hkv, 0.3, cos, ssin)
    (got_dx,) = torch.autograd.grad(got, x, dout)
    if not (torch.allclose(got, want, rtol=1e-4, atol=1e-5)
            and torch.allclose(got_dx, want_dx, rtol=1e-4, atol=1e-5)):
        return "causal attention or its gradient differs"
    x = torch.randn((3, 24), generator=g, requires_grad=True)
    w, u = torch.randn(24, generator=g, requires_grad=True), torch.randn((3, 24), generator=g)
    for fn, ref, args in ((rms_norm, reference_rms_norm, (w, 1e-6)),
                          (swiglu, reference_swiglu, (u,))):
        want, got = ref(x, *args), fn(x, *args)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return f"{fn.__name__} differs"
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(
                torch.autograd.grad(got.sum(), (x, w)[: 1 + (fn is rms_norm)]),
                torch.autograd.grad(want.sum(), (x, w)[: 1 + (fn is rms_norm)]))):
            return f"the gradient of {fn.__name__} differs"
    x, w, b = (torch.randn(s, generator=g) for s in ((11, 40), (45, 40), (45,)))
    other = torch.randn((11, 45), generator=g)
    panels = pack_panels(w)
    for mode in GEMM_MODES:
        arg = other if mode in ("add", "mul") else None
        for bb in (b, None):
            if not torch.allclose(small_gemm(x, panels, 45, bb, mode, arg),
                                  reference_small_gemm(x, w, bb, mode, arg), rtol=1e-4, atol=1e-5):
                return f"small_gemm ({mode}) differs"
    if torch.tensor(1e-40) * 1.0 == 0:  # a library must not switch the process to flush-to-zero
        return "denormal floats are flushed after loading the kernels"
    return None
