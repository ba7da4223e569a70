"""Packed training forward for Llama-family models: each prompt once per group, no padding in
the matmuls.

A GRPO batch is B prompts x G completions. The usual forward (TRL, and `completion_logprobs`)
builds one padded row per completion, `[prompt | completion | padding]`, so every prompt token
is computed G times and every padding token is computed at all; on a CPU, where a step is
bound by matmul FLOPs, that is wasted time (in the benchmark setting of `bench_vs_trl.py`,
~29% of the positions). This forward computes exactly the tokens that matter:

* the linears (q/k/v fused into one matmul, o, gate, up, down) run over a flat list of
  tokens: each distinct prompt's tokens once, then each completion's tokens but its last (the
  last is a target; it predicts nothing and nothing attends to it);
* attention runs on one block per completion, `[its prompt | itself | padding at the end]`,
  gathered from the flat list, under a plain causal mask (padding only at the end, so no
  O(S^2) mask tensor); a prompt token's output is read from the first block of its prompt, so
  the prompt's keys/values are computed once and shared by the G completions;
* the LM head runs only at the positions that predict a completion token (the prompt's last
  token and the completion's tokens but the last).

The same forward serves SFT (`PackedBatch.from_pairs`): a batch mixing short and long
examples costs what its tokens cost. On a GPU, fusing q/k/v copies those weights once per
forward (cheap for small models; at 7B scale a flash-attention varlen path would be the better
design, not built yet).

The arithmetic is the model's own (RMSNorm, RoPE from the model's rotary module, grouped-query
attention, SwiGLU) over the model's parameters, in `r1lab.models.ops` (shared with the sampler's
decoder), so autograd gives the same gradients as the Hugging Face forward; the tests check
logprobs and gradients against it. Anything that arithmetic does not reproduce (see
`r1lab.models.ops.llama_support`), dropout in training, or weights held sharded (ZeRO-3,
FSDP2) falls back to the Hugging Face forward (`packed_support` says why). Gradient
checkpointing runs packed: each layer recomputed in the backward, the LM head per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from r1lab.models import ops
from r1lab.onednn import linear, swiglu

#: float32 logits elements held at once when turning logits into logprobs (256 MiB)
LOGPROB_CHUNK_ELEMENTS = 1 << 26


def packed_support(model, max_len: int) -> str | None:
    """None when `packed_logprobs` reproduces `model`'s forward, else the reason it does not."""
    why = ops.llama_support(model, max_len)
    if why is not None:
        return why
    from r1lab.train.deepspeed_engine import partitioned
    from r1lab.train.fsdp_engine import sharded

    for p in model.parameters():
        if partitioned(p):
            return "ZeRO-3 holds the weights partitioned (the packed forward reads them whole)"
        if sharded(p):
            return "FSDP2 holds the weights sharded (the packed forward reads them whole)"
    if model.training and float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout is active"
    return None


@dataclass
class PackedBatch:
    """Index tensors of one micro-batch, built once and shared by the policy and reference forwards.

    Flat layout (what the linears see): the U distinct prompts' tokens, then the R completions'
    real tokens but their last. Attention layout: one block per completion, `[its prompt |
    itself]`, S = Lp + Tc positions, gathered from the flat list (padding positions point at
    token 0 and are masked).
    A prompt token's attention output is taken from the first block of its prompt.
    """

    ids: Tensor  # [n] token ids
    pos: Tensor  # [n] position ids
    gather: Tensor  # [R, S] flat index of each block position
    scatter: Tensor  # [n] index into the R*S block positions that holds each flat token's output
    valid_c: Tensor  # [R, Tt] bool: real completion tokens (the targets)
    block_len: Tensor  # [R] real positions of each attention block (prompt + completion inputs)
    pred: Tensor  # [m] flat index of the position that predicts each completion token
    targets: Tensor  # [m] the completion tokens (row-major over valid_c)
    width: int  # T of the caller's completion tensor; outputs are [R, width]

    @classmethod
    def from_padded(cls, input_ids: Tensor, attention_mask: Tensor, prompt_len: int,
                    rows: Tensor) -> PackedBatch:
        """From the padded layout of `join_prompt_completion` (left-padded prompts, then
        right-padded completions): rows [R] of input_ids/attention_mask [N, L+T]. Completions
        whose prompts are the same token sequence share one prompt computation."""
        rows = rows.to(input_ids.device)
        prompts = input_ids[rows, :prompt_len].masked_fill(attention_mask[rows, :prompt_len] == 0, -1)
        uniq, row_prompt = torch.unique(prompts, dim=0, return_inverse=True)  # [U, L], [R]
        prompt_ids = [[t for t in p if t >= 0] for p in uniq.tolist()]
        return cls._build(prompt_ids, row_prompt, input_ids[rows, prompt_len:],
                          attention_mask[rows, prompt_len:].sum(-1))

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[list[int], list[int]]], device=None) -> PackedBatch:
        """From (prompt token ids, completion token ids) pairs, e.g. an SFT batch; pairs with
        the same prompt share one prompt computation."""
        index: dict[tuple[int, ...], int] = {}
        row_prompt = [index.setdefault(tuple(p), len(index)) for p, _ in pairs]
        width = max(1, max(len(c) for _, c in pairs))
        comp = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (_, c) in enumerate(pairs):
            comp[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        return cls._build([list(p) for p in index], torch.tensor(row_prompt, device=device),
                          comp.to(device), torch.tensor([len(c) for _, c in pairs], device=device))

    @classmethod
    def _build(cls, prompt_ids: list[list[int]], row_prompt: Tensor, completion_ids: Tensor,
               lengths: Tensor) -> PackedBatch:
        """prompt_ids: U token lists; row_prompt [R]: each completion's prompt; completion_ids
        [R, T] right-padded with `lengths` [R] real tokens."""
        dev = completion_ids.device
        R, U = len(row_prompt), len(prompt_ids)
        if any(not p for p in prompt_ids):
            raise ValueError("an empty prompt: the first completion token has no position to be "
                             "predicted from (add a BOS token or a template)")
        plens = torch.tensor([len(p) for p in prompt_ids], device=dev)  # [U]
        clens = lengths.to(dev).long()  # [R]
        # A completion's last token is a target but predicts nothing and nothing after it
        # attends to it: the forward runs on tokens 0 .. len-2 of each completion only.
        Lp, Tt = int(plens.max()), max(1, int(clens.max()) if R else 1)
        Tc = Tt - 1  # completion input positions per block
        S = Lp + Tc
        ar_l, ar_t = torch.arange(Lp, device=dev), torch.arange(Tt, device=dev)
        valid_p = ar_l[None] < plens[:, None]  # [U, Lp], right-padded
        valid_c = ar_t[None] < clens[:, None]  # [R, Tt]: the targets
        valid_in = ar_t[None, :Tc] < (clens - 1)[:, None]  # [R, Tc]: the completion inputs
        ids_p = torch.zeros((U, Lp), dtype=torch.long, device=dev)
        for i, p in enumerate(prompt_ids):
            ids_p[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        comp = completion_ids[:, :Tt]  # [R, Tt]
        n_p = int(valid_p.sum())
        n = n_p + int(valid_in.sum())
        idx_p = torch.zeros((U, Lp), dtype=torch.long, device=dev)
        idx_p[valid_p] = torch.arange(n_p, device=dev)
        idx_c = torch.zeros((R, Tc), dtype=torch.long, device=dev)
        idx_c[valid_in] = torch.arange(n_p, n, device=dev)
        ids = torch.cat([ids_p[valid_p], comp[:, :Tc][valid_in]])
        pos_c = plens[row_prompt][:, None] + ar_t[None, :Tc]  # [R, Tc]
        pos = torch.cat([ar_l.expand(U, Lp)[valid_p], pos_c[valid_in]])
        # Attention blocks, one per completion: [its prompt | its completion inputs | padding],
        # padding only at the end, so a plain causal mask is exact (a real query never sees a
        # later position; padding queries are never read)
        plen_r = plens[row_prompt]  # [R]
        ar_s = torch.arange(S, device=dev)
        in_prompt = ar_s[None] < plen_r[:, None]  # [R, S]
        comp_pos = ar_s[None] - plen_r[:, None]  # [R, S]: completion index at block position
        in_comp = (comp_pos >= 0) & (comp_pos < (clens - 1)[:, None])
        gather = torch.zeros((R, S), dtype=torch.long, device=dev)
        gather[in_prompt] = F.pad(idx_p, (0, S - Lp))[row_prompt][in_prompt]
        if Tc:
            gather[in_comp] = idx_c.gather(1, comp_pos.clamp(0, Tc - 1))[in_comp]
        # where each flat token's attention output is read: prompts from their first block
        first = torch.full((U,), R, dtype=torch.long, device=dev).scatter_reduce(
            0, row_prompt, torch.arange(R, device=dev), "amin")  # [U]
        at_p = (first[:, None] * S + ar_l[None]).expand(U, Lp)[valid_p]
        at_c = (torch.arange(R, device=dev)[:, None] * S + plen_r[:, None] + ar_t[None, :Tc])[valid_in]
        # completion token t is predicted at token t-1, token 0 at the prompt's last token
        last_p = idx_p.gather(1, (plens - 1)[:, None])[:, 0]  # [U]
        pred = torch.cat([last_p[row_prompt][:, None], idx_c], 1)[valid_c]  # [m]
        return cls(ids=ids, pos=pos, gather=gather, scatter=torch.cat([at_p, at_c]),
                   block_len=plen_r + (clens - 1).clamp(min=0), valid_c=valid_c, pred=pred, targets=comp[valid_c], width=completion_ids.shape[1])

    @property
    def max_len(self) -> int:
        return self.gather.shape[1] + 1


def checkpointing(model) -> bool:
    """Whether gradient checkpointing is on for `model` (`enable_gradient_checkpointing`)."""
    if getattr(type(model), "is_activation_checkpointing", None) is not None:  # transformers >= 5
        return bool(getattr(model, "is_activation_checkpointing", False))
    return bool(getattr(model, "is_gradient_checkpointing", False))


def packed_logprobs(model, pb: PackedBatch, temperature: float = 1.0,
                    entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities of the packed completions' tokens under `model` -> ([R, width], entropy).

    Padding positions get logprob 0. With `entropy=True` the second value is the (detached)
    entropy of the next-token distribution at each completion token, [R, width], else None.

    Under gradient checkpointing (`checkpointing(model)`, with autograd on) each decoder layer
    keeps only its input for the backward and recomputes the rest there, and the LM head's
    logits are recomputed per chunk in the backward too (as `lean_logprobs`): activation
    memory is the layer inputs [n, d] plus one layer's and one chunk's working set.
    """
    lean = checkpointing(model) and torch.is_grad_enabled()
    hp = packed_hidden(model.model, pb, recompute=lean)
    head = model.lm_head.weight
    m = len(pb.pred)
    chunk = max(1, LOGPROB_CHUNK_ELEMENTS // head.shape[0])
    logps, ents = [], []
    for i in range(0, m, chunk):
        if lean and not entropy and hp.requires_grad:  # logits only inside the chunk
            logps.append(checkpoint(_head_logp, hp[i:i + chunk], head, pb.targets[i:i + chunk],
                                    temperature, use_reentrant=False))
            continue
        lg = linear(hp[i:i + chunk], head).float()  # [c, V]
        if temperature not in (0, 1):
            lg = lg / temperature
        lse = lg.logsumexp(-1)
        logps.append(lg.gather(-1, pb.targets[i:i + chunk, None])[:, 0] - lse)
        if entropy:
            with torch.no_grad():
                p = torch.softmax(lg, -1)
                ents.append(lse - (p * lg).sum(-1))
    valid = pb.valid_c
    out = unflatten(torch.cat(logps) if logps else hp.new_zeros(0), valid, pb.width)
    ent = unflatten(torch.cat(ents), valid, pb.width).detach() if entropy and ents else None
    return out, ent


def _head_logp(h: Tensor, head: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """log p(target) [c] of one chunk of final hidden states h [c, d] under the LM head."""
    lg = linear(h, head).float()  # [c, V]
    if temperature not in (0, 1):
        lg = lg / temperature
    return lg.gather(-1, targets[:, None])[:, 0] - lg.logsumexp(-1)


def packed_hidden(base, pb: PackedBatch, recompute: bool = False) -> Tensor:
    """The decoder's final (normed) hidden state [m, d] at each position that predicts a
    completion token, in `pb.pred` order: what the LM head reads, and what a value head reads
    (`unflatten` turns per-position values into [R, width]). `base` is the decoder stack
    (`model.model` of a causal LM, or a critic's copy of it). `recompute`: each layer inside
    `torch.utils.checkpoint` (non-reentrant), its activations recomputed in the backward."""
    h = F.embedding(pb.ids, base.embed_tokens.weight)  # [n, d]
    cos_t, ssin_t = ops.rope_table(base, pb.max_len, h.dtype)  # [max_len, D]
    for layer in base.layers:
        if recompute and h.requires_grad:
            h = checkpoint(_layer, layer, h, pb, cos_t, ssin_t, use_reentrant=False)
        else:
            h = _layer(layer, h, pb, cos_t, ssin_t)
    return ops.rms_norm_any(h.index_select(0, pb.pred), base.norm)  # only positions that predict


def _layer(layer, h: Tensor, pb: PackedBatch, cos_t: Tensor, ssin_t: Tensor) -> Tensor:
    """One decoder layer over the flat tokens h [n, d] -> [n, d]."""
    att, norm = layer.self_attn, ops.rms_norm_any  # the C kernel on CPU float32, else torch
    H, Hkv, D = att.config.num_attention_heads, att.config.num_key_value_heads, att.head_dim
    n, (R, S) = len(h), pb.gather.shape
    # one matmul for q/k/v, made from the parameters here so gradients reach each of them
    w_qkv, b_qkv = ops.fused_weights([att.q_proj, att.k_proj, att.v_proj])
    qkv = linear(norm(h, layer.input_layernorm), w_qkv, b_qkv).view(n, H + 2 * Hkv, D)
    if getattr(att, "q_norm", None) is not None:  # Qwen3: per-head RMSNorm before RoPE
        q, k, v = qkv.split([H, Hkv, Hkv], 1)
        qkv = torch.cat([norm(q, att.q_norm), norm(k, att.k_norm), v], 1)
    # block position t is position id t: a block is its prompt from position 0, then its
    # completion; pb.pos holds the same ids for the flat tokens
    o = ops.block_causal_attention(qkv, pb.gather, pb.block_len, H, Hkv, att.scaling,
                                   cos_t, ssin_t, pb.pos)  # [R, S, H*D]
    o = o.reshape(R * S, H * D).index_select(0, pb.scatter)  # [n, H*D]
    h = linear(o, att.o_proj.weight, att.o_proj.bias, add=h)
    return _mlp(layer, h, norm)


def _mlp(layer, h: Tensor, norm) -> Tensor:
    """The layer's second half: h + down(swiglu(norm(h)))."""
    mlp = layer.mlp
    x = norm(h, layer.post_attention_layernorm)
    act = swiglu(x, mlp.gate_proj.weight, mlp.gate_proj.bias, mlp.up_proj.weight, mlp.up_proj.bias)
    return linear(act, mlp.down_proj.weight, mlp.down_proj.bias, add=h)


def unflatten(flat: Tensor, valid: Tensor, width: int) -> Tensor:
    """Flat per-token values (row-major over `valid` [R, Tc]) -> [R, width], 0 elsewhere."""
    R, Tc = valid.shape
    out = flat.new_zeros((R, Tc)).masked_scatter(valid, flat.float())
    if width > Tc:
        out = torch.cat([out, out.new_zeros((R, width - Tc))], 1)
    return out[:, :width]
