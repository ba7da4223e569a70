"""The Llama-family arithmetic (Llama, Qwen2, Qwen3, Mistral), in one place for decoding and training.

`r1lab.rollout.native` (the sampler's KV-cached decoder) and `r1lab.train.packed` (the packed
training forward) both run the same math over the same Hugging Face weights: RMSNorm, RoPE,
q/k/v fused into one matmul, grouped-query attention, SwiGLU. This module holds that math, and
both import it from here (neither imports the other).

Which implementation runs is the ops backend: torch, or on CPU in float32 the C kernels
(`r1lab.kernels`) and oneDNN (`r1lab.onednn`). It is chosen once, when the model loads
(`r1lab.models.backend.resolve`, from the run's `backend` config section), and is process-wide;
the functions here only ask whether a tensor can take the chosen backend (CPU, float32).

`llama_support` says what the arithmetic here reproduces exactly; anything else (sliding windows
shorter than the sequence, dynamic RoPE, non-SiLU MLPs, quantised or adapter-wrapped linears)
is refused with a reason, and callers fall back to the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from r1lab import kernels

FAMILY = ("llama", "qwen2", "qwen3", "mistral")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # cos/sin depend on the position only
#: on CPU, attention blocks up to this many positions use two batched matmuls with an explicit
#: causal mask; longer ones (and every block on a GPU) SDPA's fused kernel (O(S) memory).
#: Forward+backward of 64 blocks x 4 heads x 64 dims on the 2-core machine, SDPA vs matmuls:
#: S=75 25 vs 19 ms, S=150 28 vs 27 ms, S=300 43 vs 56 ms.
MATMUL_ATTENTION_MAX = 128


def llama_support(model, max_len: int) -> str | None:
    """None when this module's arithmetic reproduces `model` for sequences up to `max_len`,
    else the reason it does not."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in FAMILY:
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not one of {FAMILY}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    base = getattr(model, "model", None)
    rotary = getattr(base, "rotary_emb", None)
    if base is None or rotary is None or not hasattr(base, "layers"):
        return "no model.model.layers / rotary_emb"
    if getattr(rotary, "rope_type", "default") not in STATIC_ROPE:
        return f"rope_type {rotary.rope_type!r} depends on the sequence length"
    windows = [getattr(layer.self_attn, "sliding_window", None) for layer in base.layers]
    if cfg.model_type == "mistral":
        windows.append(getattr(cfg, "sliding_window", None))
    if any(w is not None and w < max_len for w in windows):
        return "a sliding window shorter than the sequence"
    linears = [model.lm_head]
    for layer in base.layers:
        a, m = layer.self_attn, layer.mlp
        linears += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    if any(type(lin) is not nn.Linear for lin in linears):  # quantised / LoRA-wrapped layers
        return "a projection is not a plain nn.Linear"
    if model.lm_head.bias is not None or getattr(cfg, "final_logit_softcapping", None):
        return "the LM head has a bias or a soft cap"
    return None


# ---------------------------------------------------------------------------- projections
def bias_or_zeros(lin: nn.Linear) -> Tensor:
    """The linear's bias, or zeros [out_features] when it has none."""
    return lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias


def fused_weights(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """Weights (and biases, zeros where a projection has none) of linears fused into one.

    >>> a, b = nn.Linear(2, 1, bias=False), nn.Linear(2, 2)
    >>> w, bias = fused_weights([a, b])
    >>> w.shape, bias.tolist()[0], bias.shape
    (torch.Size([3, 2]), 0.0, torch.Size([3]))
    """
    w = torch.cat([lin.weight for lin in linears], 0)
    if all(lin.bias is None for lin in linears):
        return w, None
    return w, torch.cat([bias_or_zeros(lin) for lin in linears], 0)


# ---------------------------------------------------------------------------- RMSNorm
def norm_eps(norm: nn.Module) -> float:
    """The epsilon of an RMSNorm module (transformers names it `variance_epsilon` or `eps`)."""
    return getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)


def rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """HF's RMSNorm: normalise in float32, cast back, then scale by the weight (torch ops).

    >>> n = nn.RMSNorm(2, eps=0.0)
    >>> rms_norm(torch.tensor([[3.0, 4.0]]), n).mul(12.5 ** 0.5).round(decimals=4).tolist()
    [[3.0, 4.0]]
    """
    eps = norm_eps(norm)
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def rms_norm_any(x: Tensor, norm: nn.Module) -> Tensor:
    """`rms_norm` through the backend: one C pass each way (`r1lab.kernels.rms_norm`) where the
    kernels take x and the weight, else torch."""
    if kernels.supports(x, norm.weight):
        return kernels.rms_norm(x, norm.weight, norm_eps(norm))
    return rms_norm(x, norm)


def unit_rms_norm(x: Tensor, eps: Tensor) -> Tensor:
    """RMSNorm without its weight (float32): x / sqrt(|x|^2 / d + eps), eps a 0-d tensor.
    One C call on CPU (`r1lab.kernels.rms_norm`), else 4 torch kernels (the mean(x^2) form
    takes 6: square, sum, divide, add, rsqrt, multiply).

    >>> unit_rms_norm(torch.tensor([[3.0, 4.0]]), torch.tensor(0.0)).mul(12.5 ** 0.5).round(decimals=4).tolist()
    [[3.0, 4.0]]
    """
    if kernels.supports(x):
        return kernels.rms_norm(x, None, eps.item())
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.addcmul(eps, n, n, value=1 / x.shape[-1]).rsqrt_()


# ---------------------------------------------------------------------------- RoPE
def signed_sin(sin: Tensor) -> Tensor:
    """sin with rotate_half's sign folded in (see `rope`): [-sin_1, sin_2] for [sin_1, sin_2].

    >>> signed_sin(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
    [-1.0, -2.0, 3.0, 4.0]
    """
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], -1)


def rope(x: Tensor, cos: Tensor, ssin: Tensor, out: Tensor | None = None) -> Tensor:
    """RoPE as transformers applies it, x cos + rotate_half(x) sin, in 3 operations:
    rotate_half(x) is [-x2, x1] for x = [x1, x2]; rolling by half gives [x2, x1], and the
    sign sits in `ssin` (`signed_sin(sin)`). `out` may be x itself (both inputs of the last
    operation are fresh tensors).

    A quarter turn (cos 0, sin 1) maps [x1, x2] to [-x2, x1]:

    >>> rope(torch.tensor([1.0, 2.0]), torch.zeros(2), signed_sin(torch.ones(2))).tolist()
    [-2.0, 1.0]
    """
    return torch.addcmul(x * cos, x.roll(-(x.shape[-1] // 2), -1), ssin, out=out)


def rope_table(base, max_len: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed sin [max_len, D] from the decoder's own rotary module (its scaling
    included); `base` is the decoder stack (`model.model`)."""
    emb = base.embed_tokens.weight
    positions = torch.arange(max_len, device=emb.device)[None]  # [1, S]
    with torch.no_grad():
        cos, sin = base.rotary_emb(emb[:1][None].detach(), positions)  # [1, S, D]
    return cos[0].to(dtype), signed_sin(sin[0].to(dtype))


# ---------------------------------------------------------------------------- attention
def attend_one(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Attention of one query per row. q [A, H, 1, D]; k, v [A, Hkv, S, D]; bias [A*Hkv, 1, S]
    (the row's key mask repeated per kv head, made once per step for all layers).

    Query heads that share a key/value head (grouped-query attention) are one matmul's rows.
    """
    A, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    q = q.reshape(A * Hkv, H // Hkv, D)  # [A*Hkv, G, D]
    scores = torch.baddbmm(bias, q, k.reshape(A * Hkv, S, D).transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, -1)  # [A*Hkv, G, S]
    o = torch.bmm(probs, v.reshape(A * Hkv, S, D))  # [A*Hkv, G, D]
    return o.view(A, H, 1, D)


def causal_attention_matmuls(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention as two batched matmuls: q [R, H, S, D], k/v [R, Hkv, S, D] -> [R, H, S, D].
    Query heads sharing a kv head (h = kv * G + g) are stacked along the query axis, so the
    keys and values are not repeated."""
    R, H, S, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    bias = torch.full((S, S), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    bias = bias.repeat(G, 1) if G > 1 else bias  # [G*S, S]
    scores = torch.baddbmm(bias.expand(R * Hkv, G * S, S), q.reshape(R * Hkv, G * S, D),
                           k.reshape(R * Hkv, S, D).transpose(1, 2), alpha=scale)
    o = torch.bmm(torch.softmax(scores, -1), v.reshape(R * Hkv, S, D))  # [R*Hkv, G*S, D]
    return o.view(R, H, S, D)


def block_causal_attention(qkv: Tensor, gather: Tensor, block_len: Tensor, heads: int,
                           kv_heads: int, scale: float, cos_t: Tensor, ssin_t: Tensor,
                           pos: Tensor) -> Tensor:
    """Causal attention within blocks gathered from a flat token list, RoPE included.

    qkv [n, H + 2 Hkv, D] (before RoPE) of n flat tokens with position ids pos [n]; gather
    [R, S]: the flat index of each block position (block position t has position id t);
    block_len [R]: real positions per block (the rest is padding, whose output is never read);
    cos_t/ssin_t [>= S, D] (`rope_table`). Returns [R, S, H D].

    Backend: on CPU float32 the C kernel (RoPE + attention in one pass, padding skipped), with
    bf16/fp16 q/k/v (autocast) cast to float32 for it; otherwise RoPE in torch, then two
    batched matmuls for short CPU blocks, else SDPA.
    """
    n, _, D = qkv.shape
    H, Hkv = heads, kv_heads
    R, S = gather.shape
    if qkv.dtype in (torch.bfloat16, torch.float16) and kernels.causal_supports(cos_t, D):
        qkv = qkv.float()  # mixed precision on CPU: RoPE and attention in fp32, on the C kernel
    if kernels.causal_supports(qkv, D):
        blocks = qkv.reshape(n, -1).index_select(0, gather.view(-1)).view(R, S, -1)
        return kernels.causal_attention(blocks, block_len, H, Hkv, scale, cos_t, ssin_t)
    cos, ssin = cos_t[pos][:, None], ssin_t[pos][:, None]  # [n, 1, D]
    # RoPE on q and k in place: the matmul keeps its input, not its output, for backward
    qkv[:, : H + Hkv] = rope(qkv[:, : H + Hkv], cos, ssin)
    blocks = qkv.index_select(0, gather.view(-1)).view(R, S, H + 2 * Hkv, D)
    q, k, v = blocks.transpose(1, 2).split([H, Hkv, Hkv], 1)  # [R, h, S, D]
    if S <= MATMUL_ATTENTION_MAX and q.device.type == "cpu":  # GPUs: SDPA's kernels
        o = causal_attention_matmuls(q, k, v, scale)
    else:
        gqa = {"enable_gqa": True} if Hkv != H else {}
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    return o.transpose(1, 2).reshape(R, S, H * D)  # [R, S, H*D]
