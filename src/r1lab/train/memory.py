"""Training memory: log-probs without [N, T, vocab] logits, and gradient checkpointing.

At R1 lengths the logits dominate activation memory: 8 completions x 1,024 tokens x a 152k
vocabulary is 1.2 G floats (5 GB in fp32) for one micro-batch, and autograd keeps them (and
their log-softmax) for the backward. `lean_logprobs` never holds more than one chunk of them:

- the decoder runs once to the final hidden states [N, T, d] (d is ~100x smaller than V);
- the LM head, temperature, log-softmax and gather run per chunk of `chunk_tokens` positions
  inside `torch.utils.checkpoint`, so the forward keeps only the chunk's hidden states and the
  backward recomputes one chunk's logits at a time.

The result and its gradients equal `completion_logprobs` (tested to 1e-5); the cost is one
extra LM-head matmul per token in the backward.

`enable_gradient_checkpointing(model)`: each decoder layer's activations are recomputed in the
backward (transformers' own `gradient_checkpointing_enable`, non-reentrant), so activation
memory is one layer's plus the layer inputs, instead of every layer's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

#: positions whose logits exist at once (x vocab floats): 2,048 x 152k = 1.2 GB in fp32
CHUNK_TOKENS = 2048


def enable_gradient_checkpointing(model) -> None:
    """Recompute decoder-layer activations in the backward (non-reentrant checkpointing)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5
    kwargs = {"use_reentrant": False}
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def _chunk_logp(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                temperature: float) -> Tensor:
    """log p(target) for one chunk: hidden [c, d], weight [V, d], targets [c] -> [c]."""
    logits = F.linear(hidden, weight, bias).float()  # [c, V]: lives only inside this chunk
    if temperature not in (0, 1):
        logits = logits / temperature
    return logits.gather(-1, targets[:, None])[:, 0] - logits.logsumexp(-1)


def lean_logprobs(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                  prompt_len: int, temperature: float = 1.0,
                  chunk_tokens: int = CHUNK_TOKENS) -> Tensor:
    """Log-probabilities of the completion tokens (positions >= prompt_len) -> [N, T], as
    `r1lab.train.common.completion_logprobs`, holding at most `chunk_tokens` x V logits."""
    N, width = input_ids.shape
    T = width - prompt_len
    out = torch.zeros((N, T), device=input_ids.device)
    comp_len = int(attention_mask[:, prompt_len:].sum(-1).max()) if T and N else 0
    if comp_len == 0:
        return out
    end = prompt_len + comp_len
    hidden = model.model(input_ids=input_ids[:, :end], attention_mask=attention_mask[:, :end],
                         position_ids=position_ids[:, :end], use_cache=False).last_hidden_state
    hidden = hidden[:, prompt_len - 1:end - 1]  # [N, comp_len, d]: position t predicts t+1
    targets = input_ids[:, prompt_len:end]  # [N, comp_len]
    valid = attention_mask[:, prompt_len:end].bool()  # [N, comp_len]
    flat_h, flat_t = hidden[valid], targets[valid]  # [M, d], [M]: padding costs nothing
    head = model.get_output_embeddings()
    parts = []
    for i in range(0, len(flat_t), chunk_tokens):
        h = flat_h[i:i + chunk_tokens]
        t = flat_t[i:i + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_chunk_logp, h, head.weight, head.bias, t, temperature,
                                    use_reentrant=False))
        else:
            parts.append(_chunk_logp(h, head.weight, head.bias, t, temperature))
    logp = torch.zeros((N, comp_len), device=input_ids.device, dtype=parts[0].dtype)
    logp = logp.masked_scatter(valid, torch.cat(parts))  # [N, comp_len]
    return logp if comp_len == T else torch.cat([logp, out[:, comp_len:]], 1)  # [N, T]
