"""A lean decoder for Llama-family causal LMs (Llama, Qwen2, Qwen3, Mistral), used by the sampler.

Why: a `model(...)` call in transformers rebuilds masks, position embeddings and cache objects on
every decoding step, which costs more than the matmuls of a small model on a CPU (and adds
launches on a GPU). This module reads the *same* weights from the Hugging Face modules and runs
the same arithmetic (RMSNorm, RoPE, grouped-query attention, SwiGLU) over a pre-allocated KV cache:

* q/k/v and gate/up projections are fused into one matmul each (weights concatenated once per
  `generate` call, so they always match the current policy);
* RoPE cos/sin come from a table built once by the model's own rotary module;
* the left-padding mask is built once; each step only slices it;
* finished rows are dropped from the cache when that pays (see `worth_compacting`).

It is an optimisation, not a fork of the model: `native_support` refuses anything it does not
reproduce exactly (sliding windows shorter than the sequence, dynamic RoPE, non-SiLU MLPs,
quantised or adapter-wrapped linears), and the sampler then falls back to the model's forward.
The tests check that greedy decoding equals `model.generate` token for token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from r1lab import kernels
from r1lab.onednn import Linear

FAMILY = ("llama", "qwen2", "qwen3", "mistral")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # cos/sin depend on the position only
#: a CPU moves ~10 float32 FLOP in the time it copies a byte; decides when compaction pays
FLOP_PER_BYTE = 10.0


def native_support(model, max_len: int) -> str | None:
    """None when the native decoder reproduces `model` for sequences up to `max_len`, else why not."""
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


def _bias(lin: nn.Linear) -> Tensor:
    return lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias


def _cat(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """Weights (and biases, zeros where a projection has none) of linears fused into one."""
    w = torch.cat([lin.weight for lin in linears], 0)
    if all(lin.bias is None for lin in linears):
        return w, None
    return w, torch.cat([_bias(lin) for lin in linears], 0)


def _eps(norm: nn.Module) -> float:
    return getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)


class _Layer:
    """One decoder layer's projections, q/k/v fused (and gate/up where that is one matmul).

    In float32 the RMSNorm weight that precedes a projection is folded into its columns
    (W diag(g) x = W (g * x)), so a norm is 5 elementwise operations on [A, d] and no more.
    On CPU (oneDNN, see `r1lab.onednn`) gate and up stay two matmuls, SiLU fused into the
    first and the product into the second; elsewhere they are one matmul, then SiLU and a product.
    """

    def __init__(self, layer: nn.Module, rows: int) -> None:
        a, m = layer.self_attn, layer.mlp
        self.ln1, self.ln2 = layer.input_layernorm, layer.post_attention_layernorm
        qkv_w, qkv_b = _cat([a.q_proj, a.k_proj, a.v_proj])
        gate_w, up_w = m.gate_proj.weight, m.up_proj.weight
        self.fold = qkv_w.dtype == torch.float32
        if self.fold:
            qkv_w = qkv_w * self.ln1.weight
            gate_w, up_w = gate_w * self.ln2.weight, up_w * self.ln2.weight
        self.qkv = Linear(qkv_w, qkv_b, rows)
        self.o = Linear(a.o_proj.weight, a.o_proj.bias, rows)
        self.down = Linear(m.down_proj.weight, m.down_proj.bias, rows)
        self.gate = Linear(gate_w, m.gate_proj.bias, rows)
        if self.gate.packed is not None:
            self.up, self.gu = Linear(up_w, m.up_proj.bias, rows), None
        else:
            gu_b = None if m.gate_proj.bias is None and m.up_proj.bias is None else torch.cat(
                [_bias(m.gate_proj), _bias(m.up_proj)])
            self.gu = Linear(torch.cat([gate_w, up_w]), gu_b)
        self.q_norm, self.k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        self.scale = a.scaling
        self.eps1, self.eps2 = (qkv_w.new_tensor(_eps(n)) for n in (self.ln1, self.ln2))

    def norm1(self, h: Tensor) -> Tensor:
        return _unit_rms(h, self.eps1) if self.fold else _rms(h, self.ln1)

    def norm2(self, h: Tensor) -> Tensor:
        return _unit_rms(h, self.eps2) if self.fold else _rms(h, self.ln2)

    def swiglu(self, x: Tensor) -> Tensor:
        """silu(x Wg^T) * (x Wu^T), x already normalised."""
        if self.gu is None:
            return self.up.times(x, self.gate.silu(x))
        g, u = self.gu(x).chunk(2, -1)
        return F.silu(g) * u


def _unit_rms(x: Tensor, eps: Tensor) -> Tensor:
    """RMSNorm without its weight (float32): x / sqrt(|x|^2 / d + eps), eps a 0-d tensor.
    One C call on CPU (`r1lab.kernels.rms_norm`), else 4 torch kernels (the mean(x^2) form
    takes 6: square, sum, divide, add, rsqrt, multiply)."""
    if kernels.supports(x):
        return kernels.rms_norm(x, None, eps.item())
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.addcmul(eps, n, n, value=1 / x.shape[-1]).rsqrt_()


def _rms(x: Tensor, norm: nn.Module) -> Tensor:
    """HF's RMSNorm: normalise in float32, cast back, then scale by the weight."""
    eps = _eps(norm)
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _signed_sin(sin: Tensor) -> Tensor:
    """sin with rotate_half's sign folded in (see `_rotate_fast`)."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], -1)


def _rotate_fast(x: Tensor, cos: Tensor, signed_sin: Tensor, out: Tensor | None = None) -> Tensor:
    """RoPE as transformers applies it, x cos + rotate_half(x) sin, in 3 operations:
    rotate_half(x) is [-x2, x1] for x = [x1, x2]; rolling by half gives [x2, x1], and the
    sign sits in `signed_sin` (see `_signed_sin`).
    `out` may be x itself (both inputs of the last operation are fresh tensors)."""
    return torch.addcmul(x * cos, x.roll(-(x.shape[-1] // 2), -1), signed_sin, out=out)


def _attend_one(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
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


class NativeDecoder:
    """KV-cached forward of a Llama-family model over `rows` sequences of up to `max_len` tokens.

    Usage: `prefill(ids, mask, repeat)` once, then `step(tokens, positions)` per new token;
    `keep(rows)` drops the other rows from the cache.
    """

    def __init__(self, model, rows: int, max_len: int, storage: Tensor | None = None) -> None:
        """`storage`: a flat tensor of the model's dtype and device to hold the KV cache in, if
        it is large enough (`cache_elements`), instead of a new allocation."""
        cfg, base = model.config, model.model
        self.embed = base.embed_tokens.weight
        self.norm, head = base.norm, model.lm_head.weight
        self.fold = head.dtype == torch.float32
        if self.fold:  # the final RMSNorm's weight folded into the LM head, as in `_Layer`
            head = head * self.norm.weight
        self.lm_head = Linear(head, None, rows)
        self.eps = head.new_tensor(_eps(self.norm))
        self.layers = [_Layer(layer, rows) for layer in base.layers]
        self.packed = any(lin.packed is not None for w in self.layers for lin in (w.qkv, w.gate))
        a = base.layers[0].self_attn
        self.H, self.D = cfg.num_attention_heads, a.head_dim
        self.Hkv = cfg.num_key_value_heads
        self.gqa = cfg.num_key_value_heads != cfg.num_attention_heads
        dev, dt = self.embed.device, self.embed.dtype
        positions = torch.arange(max_len, device=dev)[None]  # [1, S]
        cos, sin = base.rotary_emb(self.embed[:1][None], positions)  # [1, S, D]
        self.cos, self.sin = cos[0].to(dt), _signed_sin(sin[0].to(dt))  # [S, D]
        n_layers = len(self.layers)
        # k and v of every layer in one tensor, so dropping rows is one copy: [2, layers, A, Hkv, S, D]
        shape = (2, n_layers, rows, self.Hkv, max_len, self.D)
        if storage is not None and storage.numel() >= self.cache_elements(model, rows, max_len):
            self.kv = storage[: self.cache_elements(model, rows, max_len)].view(shape)
        else:
            self.kv = torch.empty(shape, device=dev, dtype=dt)
        self.neg = torch.finfo(dt).min
        self.bias = torch.full((rows, 1, 1, max_len), self.neg, device=dev, dtype=dt)  # key mask
        # one-token steps through the fused C kernel (RoPE + cache write + attention) where it runs
        self.fused = kernels.supports(self.kv)
        self.len = 0  # positions filled in the cache
        self.max_len = max_len
        self.n_params = sum(p.numel() for p in model.parameters())

    @staticmethod
    def cache_elements(model, rows: int, max_len: int) -> int:
        """Elements of the KV cache for `rows` sequences of up to `max_len` tokens."""
        cfg, a = model.config, model.model.layers[0].self_attn
        return 2 * cfg.num_hidden_layers * rows * cfg.num_key_value_heads * max_len * a.head_dim

    # ------------------------------------------------------------------ forward
    def _forward(self, ids: Tensor, pos: Tensor, attn_bias: Tensor) -> Tensor:
        """ids/pos [A, S] written at cache positions len..len+S; attn_bias [A, 1, S, len+S].
        Returns the last position's logits [A, V]."""
        A, S = ids.shape
        c, end = self.len, self.len + S
        H, Hkv, D = self.H, self.Hkv, self.D
        h = F.embedding(ids.reshape(-1), self.embed)  # [A*S, d]
        if S == 1 and self.fused:
            return self._step_fused(h, pos.reshape(-1), attn_bias.reshape(A, end))
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [A, 1, S, D]
        if S == 1:  # one key mask per kv head, shared by the layers
            attn_bias = attn_bias[:, 0].expand(A, Hkv, end).reshape(A * Hkv, 1, end)
        for i, w in enumerate(self.layers):
            qkv = w.qkv(w.norm1(h)).view(A, S, H + 2 * Hkv, D).transpose(1, 2)  # [A, h, S, D]
            qk = qkv[:, : H + Hkv]
            if w.q_norm is not None:
                qk = torch.cat([_rms(qkv[:, :H], w.q_norm), _rms(qkv[:, H:H + Hkv], w.k_norm)], 1)
            _rotate_fast(qk, cos, sin, out=qkv[:, : H + Hkv])  # RoPE written back into qkv
            # k and v of this layer into the cache in one copy: [A, 2*Hkv, S, D] -> [2, A, Hkv, S, D]
            self.kv[:, i, :, :, c:end] = qkv[:, H:].unflatten(1, (2, Hkv)).transpose(0, 1)
            q, k, v = qkv[:, :H], self.kv[0, i, :, :, :end], self.kv[1, i, :, :, :end]
            if S == 1:  # decoding: two batched matmuls beat SDPA's CPU kernel for one query
                o = _attend_one(q, k, v, attn_bias, w.scale)  # [A, H, 1, D]
            else:
                o = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_bias, scale=w.scale,
                    **({"enable_gqa": True} if self.gqa else {}))  # [A, H, S, D]
            h = w.o.add_to(h, o.transpose(1, 2).reshape(A * S, H * D))  # residual add fused
            h = w.down.add_to(h, w.swiglu(w.norm2(h)))
        self.len = end
        return self._logits(h.view(A, S, -1)[:, -1])

    def _step_fused(self, h: Tensor, pos: Tensor, bias: Tensor) -> Tensor:
        """A one-token step with each layer's RoPE, cache write and attention in one C call
        (`r1lab.kernels.decode_attention`). h [A, d], pos [A], bias [A, len+1] -> logits [A, V]."""
        A, H, Hkv, D = len(h), self.H, self.Hkv, self.D
        for i, w in enumerate(self.layers):
            qkv = w.qkv(w.norm1(h))  # [A, (H + 2 Hkv) D]
            if w.q_norm is not None:  # Qwen3: per-head RMSNorm before RoPE, written back
                x = qkv.view(A, H + 2 * Hkv, D)
                x[:, :H], x[:, H:H + Hkv] = _rms(x[:, :H], w.q_norm), _rms(x[:, H:H + Hkv], w.k_norm)
            o = kernels.decode_attention(qkv, self.cos, self.sin, pos, self.kv[0, i], self.kv[1, i],
                                         bias, self.len, H, w.scale)  # [A, H D]
            h = w.o.add_to(h, o)
            h = w.down.add_to(h, w.swiglu(w.norm2(h)))
        self.len += 1
        return self._logits(h)

    def _logits(self, last: Tensor) -> Tensor:
        """Final norm and LM head: last hidden states [A, d] -> logits [A, V]."""
        x = _unit_rms(last, self.eps) if self.fold else _rms(last, self.norm)
        return self.lm_head(x)  # [A, V]

    def prefill(self, ids: Tensor, mask: Tensor, pos: Tensor, repeat: int = 1) -> Tensor:
        """Left-padded prompts ids/mask/pos [P, L], computed once; their cache is then repeated
        `repeat` times (row p -> rows p*repeat .. p*repeat+repeat-1). Returns logits [P, V]."""
        P, L = ids.shape
        if P * repeat != self.kv.shape[2]:
            raise ValueError(f"{P} prompts x {repeat} != {self.kv.shape[2]} cache rows")
        neg = self.neg
        pad_bias = torch.zeros((P, L), dtype=self.kv.dtype, device=ids.device)
        pad_bias = pad_bias.masked_fill(~mask.bool(), neg)  # [P, L]
        causal = torch.full((L, L), neg, dtype=self.kv.dtype, device=ids.device).triu(1)
        bias = (causal[None] + pad_bias[:, None, :]).clamp(min=neg)[:, None]  # [P, 1, L, L]
        full, self.kv = self.kv, self.kv[:, :, :P]  # fill rows 0..P-1, then spread them
        logits = self._forward(ids, pos, bias)
        self.kv = full
        if repeat > 1:  # rows p*repeat .. p*repeat+repeat-1 <- row p, one broadcast copy
            full[..., :L, :].unflatten(2, (P, repeat)).copy_(full[:, :, :P, None, :, :L].clone())
        self.bias[:, 0, 0, :L] = pad_bias.repeat_interleave(repeat, 0)
        return logits

    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """One new token per row: tokens/positions [A] -> logits [A, V]."""
        self.bias[:, :, :, self.len] = 0  # the new position becomes visible
        return self._forward(tokens[:, None], positions[:, None], self.bias[..., : self.len + 1])

    # ------------------------------------------------------------------ compaction
    def worth_compacting(self, dead: int, alive: int, steps_left: int) -> bool:
        """Dropping `dead` rows moves at most min(dead, alive) rows' caches (see `keep`); it
        pays when the compute it saves over the remaining steps is larger, both counted in
        FLOP-equivalents."""
        saved = dead * steps_left * 2.0 * self.n_params
        row_bytes = self.kv[:, :, 0, :, : self.len].numel() * self.kv.element_size()
        return saved > FLOP_PER_BYTE * 2 * min(dead, alive) * row_bytes

    def batch_size(self, alive: int) -> int:
        """The batch size to shrink to when `alive` rows are left: `alive` itself below 32, then
        rounded up to one of 16 sizes per doubling (32, 34, .., 64, 68, .., 128, 136, ..).

        oneDNN builds (~0.5-1 ms) and caches a kernel per (weight, batch size), in a cache of
        1024 by default; decoding 6 kinds of projection at every size from 1 to 256 rows would
        overflow it and rebuild kernels on every call. With this rounding, up to ~1000 rows stay
        within it, at the cost of at most 1/16 of the rows computing a finished sequence.
        """
        if not self.packed or alive < 32:
            return alive
        step = 1 << (alive.bit_length() - 5)
        return -(-alive // step) * step

    def keep(self, rows: Tensor) -> Tensor:
        """Keep only `rows` (ascending indices into the current batch) in the cache.

        Kept rows beyond the new batch size move into the slots of dropped rows, so the copy is
        of at most that many rows' caches, not of every kept row. Returns, for each new
        position, the old index of the row now there [len(rows)].
        """
        n = len(rows)
        order = torch.arange(n, device=rows.device)
        hole = torch.ones(n, dtype=torch.bool, device=rows.device)
        hole[rows[rows < n]] = False
        holes, movers = hole.nonzero().squeeze(-1), rows[rows >= n]  # as many of each
        if len(movers):
            self.kv[:, :, holes, :, : self.len] = self.kv[:, :, movers, :, : self.len]
            self.bias[holes] = self.bias[movers]
            order[holes] = movers
        self.kv, self.bias = self.kv[:, :, :n], self.bias[:n]
        return order
