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
probe (once per process) and otherwise falls back to `F.linear`; `R1LAB_ONEDNN=0` turns it off.
It has no autograd: this is for inference paths (the sampler), where a weight is packed once
per `generate` call and used for every decoding step.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

_usable: bool | None = None


def onednn_usable() -> bool:
    """True when oneDNN linears run here and match `F.linear` (checked once per process)."""
    global _usable
    if _usable is None:
        _usable = _probe()
    return _usable


def _probe() -> bool:
    if os.environ.get("R1LAB_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
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


class Linear:
    """`x W^T + b` for a fixed weight, with the fused variants a decoder needs.

    On CPU in float32 (when `onednn_usable()`) the weight is packed for oneDNN at construction
    (`rows`: the typical number of input rows, a layout hint; any row count works); elsewhere
    (GPU, half precision, no oneDNN) every method is the plain torch expression. The weight must
    not change while this object is in use: build a new one after an optimiser step.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, rows: int = 64) -> None:
        self.weight, self.bias = weight, bias
        self.packed = None
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and onednn_usable():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, rows))

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def silu(self, x: Tensor) -> Tensor:
        """silu(x W^T + b)."""
        if self.packed is None:
            return F.silu(F.linear(x, self.weight, self.bias))
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "swish", [], "")

    def add_to(self, h: Tensor, x: Tensor) -> Tensor:
        """h + x W^T + b (a residual connection), h [M, out] contiguous."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, h, self.packed, self.bias, "add")
        if self.bias is None:
            return torch.addmm(h, x, self.weight.t())
        return h + F.linear(x, self.weight, self.bias)

    def times(self, x: Tensor, other: Tensor) -> Tensor:
        """(x W^T + b) * other, other [M, out] contiguous."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "mul")
        return F.linear(x, self.weight, self.bias) * other
