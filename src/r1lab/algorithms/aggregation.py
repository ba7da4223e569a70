"""Loss aggregation: from a per-token loss ``[N, T]`` to the scalar that is minimised.

One signature, called through ``AGGREGATIONS``::

    loss = AGGREGATIONS.get(name)(per_token, mask, *, num_tokens=None, num_seqs=None,
                                  norm_len=None)

Gradient accumulation and data parallelism: pass ``num_tokens`` / ``num_seqs`` as the counts of
the *whole* optimiser batch (all micro-batches on all ranks). Each micro-batch loss then is its
exact share, and summing the micro-batch losses of every rank gives the full-batch loss. DDP
*averages* gradients over ranks, so under DDP either multiply the loss by the world size or pass
``num_tokens / world_size`` (what TRL's ``dapo`` loss does). Without them the local counts are
used, which is right for one micro-batch on one process.

How the peers' names map here (TRL ``loss_type`` / verl ``loss_agg_mode``):

=====================  ==========================  ==============================
r1lab                  TRL                         verl
=====================  ==========================  ==============================
token_mean             ``bnpo``, ``dapo`` (global)  ``token-mean``
seq_mean_token_mean    ``grpo``                    ``seq-mean-token-mean``
seq_mean_token_sum     --                          ``seq-mean-token-sum``
seq_mean_token_sum_norm ``dr_grpo``                ``seq-mean-token-sum-norm`` (*)
=====================  ==========================  ==============================

(*) verl divides the token sum of the whole batch by the constant only, without dividing by the
number of sequences; r1lab follows TRL and the Dr. GRPO paper (mean over sequences).
"""

from __future__ import annotations

import torch  # noqa: F401 -- the docstring examples use it
from torch import Tensor

from r1lab.registry import Registry

AGGREGATIONS: Registry = Registry(
    "loss_aggregation", "per-token loss [N, T] + mask -> scalar loss to minimise"
)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1 (over ``dim``, or everything)."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1; an empty mask gives 0, not NaN.

    >>> masked_mean(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
    tensor(2.)
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def _count(given: float | int | Tensor | None, local: Tensor | int) -> Tensor | float:
    """The global count when given, else the local one (at least 1: an empty batch gives 0)."""
    if given is not None:
        return given
    return local.clamp(min=1) if isinstance(local, Tensor) else float(max(local, 1))


@AGGREGATIONS.register("token_mean")
def token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    norm_len: float | None = None,
) -> Tensor:
    """Sum over all completion tokens / the number of completion tokens of the global batch.

    Every token weighs the same, whatever the length of its sequence (DAPO's "token-level policy
    gradient loss"). Reproduces TRL ``loss_type="bnpo"`` (local count) and ``"dapo"`` (global
    count via ``num_tokens``) and verl ``loss_agg_mode="token-mean"``.

    >>> loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> token_mean(loss, mask)  # (1 + 2 + 3 + 4) / 4
    tensor(2.5000)
    >>> token_mean(loss, mask, num_tokens=8)  # this micro-batch holds half of the batch's tokens
    tensor(1.2500)
    """
    local = mask.to(per_token.dtype).sum()
    return masked_sum(per_token, mask) / _count(num_tokens, local)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    norm_len: float | None = None,
) -> Tensor:
    """Mean over sequences of the mean over each sequence's tokens: the ``1/|o_i|`` of GRPO.

    The form written in the DeepSeekMath/R1 GRPO objective; a long completion's tokens weigh less
    than a short one's. A row with no completion token contributes 0 but still counts as a
    sequence (TRL clamps the length to 1 the same way). Reproduces TRL ``loss_type="grpo"`` and
    verl ``loss_agg_mode="seq-mean-token-mean"``.

    >>> loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> seq_mean_token_mean(loss, mask)  # (2 + 4) / 2
    tensor(3.)
    """
    lengths = mask.to(per_token.dtype).sum(-1).clamp(min=1)  # [N]
    per_seq = masked_sum(per_token, mask, dim=-1) / lengths  # [N]
    return per_seq.sum() / _count(num_seqs, per_seq.shape[0])


@AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    norm_len: float | None = None,
) -> Tensor:
    """Mean over sequences of each sequence's token sum (verl ``seq-mean-token-sum``).

    >>> loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> seq_mean_token_sum(loss, mask)  # (6 + 4) / 2
    tensor(5.)
    """
    return masked_sum(per_token, mask) / _count(num_seqs, per_token.shape[0])


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    norm_len: float | None = None,
) -> Tensor:
    """Dr. GRPO: token sums divided by a *constant* length, averaged over sequences.

    ``norm_len`` should be the same constant for every step (the maximum completion length), so
    that no length bias creeps in through the normaliser; it defaults to the padded length ``T``
    of this batch, which is *not* constant. Reproduces TRL ``loss_type="dr_grpo"``
    (``sum / (batch_size * max_completion_length)``).

    >>> loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> seq_mean_token_sum_norm(loss, mask, norm_len=5)  # (6 + 4) / (2 * 5)
    tensor(1.)
    """
    length = per_token.shape[-1] if norm_len is None else norm_len
    return masked_sum(per_token, mask) / (_count(num_seqs, per_token.shape[0]) * length)
