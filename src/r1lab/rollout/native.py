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

The arithmetic itself (norms, RoPE, fused projections, attention) is `r1lab.models.ops`, shared
with the packed training forward; this module is the cache and the decoding loop around it.

It is an optimisation, not a fork of the model: `native_support` refuses anything it does not
reproduce exactly (sliding windows shorter than the sequence, dynamic RoPE, non-SiLU MLPs,
quantised or adapter-wrapped linears), and the sampler then falls back to the model's forward.
The tests check that greedy decoding equals `model.generate` token for token.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from r1lab import kernels, onednn
from r1lab.models import ops
from r1lab.onednn import MIN_PACKED_WEIGHT, Linear

#: a CPU moves ~10 float32 FLOP in the time it copies a byte; decides when compaction pays
FLOP_PER_BYTE = 10.0


def native_support(model, max_len: int) -> str | None:
    """None when the native decoder reproduces `model` for sequences up to `max_len`, else why
    not (`r1lab.models.ops.llama_support`)."""
    return ops.llama_support(model, max_len)


class _Layer:
    """One decoder layer's projections, q/k/v fused (and gate/up where that is one matmul).

    In float32 the RMSNorm weight that precedes a projection is folded into its columns
    (W diag(g) x = W (g * x)), so a norm is 5 elementwise operations on [A, d] and no more.
    On CPU (oneDNN or, at few rows, the C kernel: see `r1lab.onednn.Linear`) gate and up stay
    two matmuls, SiLU fused into the first and the product into the second; elsewhere they are
    one matmul, then SiLU and a product.
    """

    def __init__(self, layer: nn.Module, rows: int, matmul_dtype: torch.dtype | None = None) -> None:
        a, m = layer.self_attn, layer.mlp
        self.ln1, self.ln2 = layer.input_layernorm, layer.post_attention_layernorm
        qkv_w, qkv_b = ops.fused_weights([a.q_proj, a.k_proj, a.v_proj])
        gate_w, up_w = m.gate_proj.weight, m.up_proj.weight
        self.fold = qkv_w.dtype == torch.float32
        if self.fold:
            qkv_w = qkv_w * self.ln1.weight
            gate_w, up_w = gate_w * self.ln2.weight, up_w * self.ln2.weight
        lin = Linear if matmul_dtype is None else partial(CastLinear, dtype=matmul_dtype)
        self.qkv = lin(qkv_w, qkv_b, rows)
        self.o = lin(a.o_proj.weight, a.o_proj.bias, rows)
        self.down = lin(m.down_proj.weight, m.down_proj.bias, rows)
        self.gate = lin(gate_w, m.gate_proj.bias, rows)
        if self.gate.fused:
            self.up, self.gu = lin(up_w, m.up_proj.bias, rows), None
        else:
            gu_b = None if m.gate_proj.bias is None and m.up_proj.bias is None else torch.cat(
                [ops.bias_or_zeros(m.gate_proj), ops.bias_or_zeros(m.up_proj)])
            self.gu = lin(torch.cat([gate_w, up_w]), gu_b, rows)
        self.q_norm, self.k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        self.scale = a.scaling
        self.eps1, self.eps2 = (qkv_w.new_tensor(ops.norm_eps(n)) for n in (self.ln1, self.ln2))

    def norm1(self, h: Tensor) -> Tensor:
        return ops.unit_rms_norm(h, self.eps1) if self.fold else ops.rms_norm(h, self.ln1)

    def norm2(self, h: Tensor) -> Tensor:
        return ops.unit_rms_norm(h, self.eps2) if self.fold else ops.rms_norm(h, self.ln2)

    def swiglu(self, x: Tensor) -> Tensor:
        """silu(x Wg^T) * (x Wu^T), x already normalised."""
        if self.gu is None:
            return self.up.times(x, self.gate.silu(x))
        g, u = self.gu(x).chunk(2, -1)
        return F.silu(g) * u


class CastLinear:
    """`Linear`'s interface with the weight held in a lower precision (`dtype`, e.g. bfloat16):
    the input is cast to it, the matmul runs in it (AMX on CPUs that have it; half the weight
    bytes to read per decoding step either way) and the result comes back in the input's dtype.
    Activations, the KV cache, norms and attention stay in float32 (and on the C kernels).

    On CPU, bfloat16 weights of at least `MIN_PACKED_WEIGHT` elements are packed once for
    oneDNN (`onednn.bf16_usable`): 25M Qwen2, one decoding step's projections at 16 rows, one
    core: 11.4 ms with `F.linear` in bf16, 9.6 ms packed (19.7 ms in float32, packed).
    """

    packed = None
    fused = False  # no fused SiLU/product forms: gate and up are one matmul (`_Layer`)

    def __init__(self, weight: Tensor, bias: Tensor | None = None, rows: int = 64,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self.weight = weight.detach().to(dtype)
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.in_features = weight.shape[1]
        self.onednn = None
        if (self.weight.device.type == "cpu" and dtype == torch.bfloat16
                and self.weight.numel() >= MIN_PACKED_WEIGHT and onednn.bf16_usable()):
            self.onednn = torch.ops.mkldnn._reorder_linear_weight(self.weight, max(1, rows))
            self.weight = None  # the packed copy is all that is used

    def __call__(self, x: Tensor) -> Tensor:
        xl = x.to(self.dtype)
        if self.onednn is not None:
            y = torch.ops.mkldnn._linear_pointwise(xl, self.onednn, self.bias, "none", [], "")
        else:
            y = F.linear(xl, self.weight, self.bias)
        return y.to(x.dtype)

    def add_to(self, h: Tensor, x: Tensor) -> Tensor:
        """h + x W^T + b (the residual stays in h's dtype)."""
        return h + self(x)


class NativeDecoder:
    """KV-cached forward of a Llama-family model over `rows` sequences of up to `max_len` tokens.

    Usage: `prefill(ids, mask, repeat)` once, then `step(tokens, positions)` per new token;
    `keep(rows)` drops the other rows from the cache.
    """

    def __init__(self, model, rows: int, max_len: int, storage: Tensor | None = None,
                 matmul_dtype: torch.dtype | None = None) -> None:
        """`storage`: a flat tensor of the model's dtype and device to hold the KV cache in, if
        it is large enough (`cache_elements`), instead of a new allocation. `matmul_dtype`:
        the layers' projections in this dtype (`CastLinear`, e.g. bfloat16 from float32
        weights under mixed precision); None keeps the weights' own."""
        cfg, base = model.config, model.model
        if matmul_dtype == base.embed_tokens.weight.dtype:
            matmul_dtype = None
        self.embed = base.embed_tokens.weight
        self.norm, head = base.norm, model.lm_head.weight
        self.fold = head.dtype == torch.float32
        if self.fold:  # the final RMSNorm's weight folded into the LM head, as in `_Layer`
            head = head * self.norm.weight
        self.lm_head = Linear(head, None, rows)
        self.eps = head.new_tensor(ops.norm_eps(self.norm))
        self.layers = [_Layer(layer, rows, matmul_dtype) for layer in base.layers]
        self.packed = any(lin.packed is not None for w in self.layers for lin in (w.qkv, w.gate))
        a = base.layers[0].self_attn
        self.H, self.D = cfg.num_attention_heads, a.head_dim
        self.Hkv = cfg.num_key_value_heads
        self.gqa = cfg.num_key_value_heads != cfg.num_attention_heads
        dev, dt = self.embed.device, self.embed.dtype
        self.cos, self.sin = ops.rope_table(base, max_len, dt)  # [S, D], sin signed
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
                qk = torch.cat([ops.rms_norm(qkv[:, :H], w.q_norm), ops.rms_norm(qkv[:, H:H + Hkv], w.k_norm)], 1)
            ops.rope(qk, cos, sin, out=qkv[:, : H + Hkv])  # RoPE written back into qkv
            # k and v of this layer into the cache in one copy: [A, 2*Hkv, S, D] -> [2, A, Hkv, S, D]
            self.kv[:, i, :, :, c:end] = qkv[:, H:].unflatten(1, (2, Hkv)).transpose(0, 1)
            q, k, v = qkv[:, :H], self.kv[0, i, :, :, :end], self.kv[1, i, :, :, :end]
            if S == 1:  # decoding: two batched matmuls beat SDPA's CPU kernel for one query
                o = ops.attend_one(q, k, v, attn_bias, w.scale)  # [A, H, 1, D]
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
                x[:, :H], x[:, H:H + Hkv] = ops.rms_norm(x[:, :H], w.q_norm), ops.rms_norm(x[:, H:H + Hkv], w.k_norm)
            o = kernels.decode_attention(qkv, self.cos, self.sin, pos, self.kv[0, i], self.kv[1, i],
                                         bias, self.len, H, w.scale)  # [A, H D]
            h = w.o.add_to(h, o)
            h = w.down.add_to(h, w.swiglu(w.norm2(h)))
        self.len += 1
        return self._logits(h)

    def _logits(self, last: Tensor) -> Tensor:
        """Final norm and LM head: last hidden states [A, d] -> logits [A, V]."""
        x = ops.unit_rms_norm(last, self.eps) if self.fold else ops.rms_norm(last, self.norm)
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
