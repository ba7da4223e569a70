"""Token log-probabilities of a step's completions under a model, micro-batch by micro-batch.

Every forward pass of the step goes through here: the policy's (with gradient, in the update),
the frozen reference's and PPO's critic's (values). Llama-family models take the packed forward
(`r1lab.train.packed`: each prompt computed once per group, no padding in the matmuls); other
models, or `train.packed: false`, take the padded Hugging Face forward, with micro-batches
grouped by length so that each is cut to its own longest sequence.
"""

from __future__ import annotations

import torch

from r1lab.models.loading import precision
from r1lab.train.batch import TokenBatch
from r1lab.train.common import completion_logprobs
from r1lab.train.memory import lean_logprobs
from r1lab.train.packed import PackedBatch, packed_logprobs, packed_support

#: the cost of one more forward/backward call, in padded tokens (Python, kernel launches,
#: smaller matmuls); splitting a micro-batch by length must save more padding than this
CALL_COST_TOKENS = 96


class Forward:
    """`logprobs(model, tokens, rows)` and the micro-batches to call it on."""

    def __init__(self, micro_batch_size: int, temperature: float, packed: bool = True,
                 lean: bool = False, token_budget: int | None = None,
                 autocast: torch.dtype | None = None) -> None:
        self.micro_batch_size, self.temperature, self.packed = micro_batch_size, temperature, packed
        self.token_budget = token_budget  # prompt + completion tokens per micro-batch at most
        self.lean = lean  # padded path: `lean_logprobs` (no [n, T, V] logits kept for backward)
        self.autocast = autocast  # mixed precision: matmuls in this dtype, fp32 master weights

    def is_packed(self, model, width: int) -> bool:
        """Whether `model`'s forward on sequences of up to `width` tokens is `packed_logprobs`."""
        return self.packed and packed_support(model, width) is None

    def micro_batches(self, model, tokens: TokenBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """Packed: consecutive rows (a group's completions share one prompt computation).
        Padded: rows grouped by length, each chunk cut to its own longest sequence."""
        mb = self.micro_batch_size
        if self.is_packed(model, tokens.width):
            chunks = [rows[i:i + mb] for i in range(0, len(rows), mb)]
        else:
            chunks = length_micro_batches(rows, tokens.lengths[rows], mb)
        if self.token_budget is None:
            return chunks
        prompt = tokens.attn[:, :tokens.prompt_len].sum(-1)  # [N]
        cost = (prompt + tokens.lengths).tolist()  # [N] tokens each row's forward touches
        return [part for c in chunks for part in token_budget_split(c, cost, self.token_budget)]

    def logprobs(self, model, tokens: TokenBatch, idx: torch.Tensor) -> torch.Tensor:
        """Token logprobs [len(idx), T] of completions `idx` (gradient as the caller's mode)."""
        t = tokens
        with precision(self.autocast, t.input_ids.device):  # mixed precision, or nothing
            if self.is_packed(model, t.width):
                pb = PackedBatch.from_padded(t.input_ids, t.attn, t.prompt_len, idx)
                return packed_logprobs(model, pb, self.temperature)[0].float()
            fn = lean_logprobs if self.lean and hasattr(model, "model") else completion_logprobs
            return fn(model, t.input_ids[idx], t.attn[idx], t.pos[idx], t.prompt_len,
                      self.temperature).float()

    def reference(self, model, tokens: TokenBatch) -> torch.Tensor:
        """Logprobs [N, T] of every completion under the frozen `model` (the reference policy)."""
        out = torch.zeros_like(tokens.mask, dtype=torch.float32)  # [N, T]
        rows = torch.arange(len(tokens), device=tokens.input_ids.device)
        with torch.inference_mode():
            for idx in self.micro_batches(model, tokens, rows):
                out[idx] = self.logprobs(model, tokens, idx)
        return out  # made outside inference mode: autograd may save it for the KL's backward


def token_budget_split(rows: torch.Tensor, cost: list[int], budget: int) -> list[torch.Tensor]:
    """`rows` cut, in order, into runs whose summed `cost` stays within `budget` (a row over
    the budget alone is a run of its own): micro-batching by a token budget.

    >>> [c.tolist() for c in token_budget_split(torch.arange(5), [3, 3, 3, 9, 1], 6)]
    [[0, 1], [2], [3], [4]]
    """
    out, start, used = [], 0, 0
    for i, r in enumerate(rows.tolist()):
        if i > start and used + cost[r] > budget:
            out.append(rows[start:i])
            start, used = i, 0
        used += cost[r]
    if len(rows):
        out.append(rows[start:])
    return out


def length_micro_batches(rows: torch.Tensor, lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`rows` split into chunks of at most `size`, each padded only to its own longest sequence.

    Rows are sorted by length and cut where it saves padded tokens: a dynamic programme over the
    cut points minimises sum(rows x longest) + CALL_COST_TOKENS per chunk. With 64 completions of
    which a third stop early this trims ~15% of the positions a single padded batch computes.

    >>> [c.tolist() for c in length_micro_batches(torch.arange(6), torch.tensor([90, 5, 90, 4, 90, 6]), 8)]
    [[3, 1, 5], [0, 2, 4]]
    """
    n = len(rows)
    if n == 0:
        return []
    order = torch.argsort(lengths, stable=True)
    rows, ls = rows[order], lengths[order].tolist()
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - size), j):  # chunk = sorted rows i..j-1, padded to ls[j-1]
            cost = best[i] + (j - i) * ls[j - 1] + CALL_COST_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(rows[cut[j]:j])
        j = cut[j]
    return chunks[::-1]
