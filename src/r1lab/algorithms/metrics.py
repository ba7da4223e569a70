"""Per-step diagnostics and DAPO helpers: zero-signal groups, entropy, clip fractions, approx KL.

Peer settings: ``clip_fractions`` are TRL's ``clip_ratio/{low,high,region}_mean`` (token level)
and verl's ``pg_clipfrac``; ``sequence_clip_fractions`` are TRL's with
``importance_sampling_level="sequence"`` (GSPO), counted per sequence.

All return plain tensors computed without gradient; log them with ``.item()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.algorithms.aggregation import masked_mean
from r1lab.algorithms.kl import k3


@torch.no_grad()
def zero_signal_groups(rewards: Tensor, group_size: int, *, atol: float = 0.0) -> Tensor:
    """``[N]`` bool: True for every row whose group's rewards are all equal (within ``atol``).

    Such a group has zero group-relative advantage, so it contributes no gradient; DAPO's
    dynamic sampling drops these groups and samples more prompts. A group of size 1 is always
    zero-signal.

    >>> zero_signal_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), group_size=2)
    tensor([ True,  True, False, False,  True,  True])
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # [B, G]
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values  # [B]
    return (spread <= atol).repeat_interleave(group_size)  # [N]


@torch.no_grad()
def entropy_from_logits(logits: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Per-position entropy ``H = logsumexp(z) - sum softmax(z) * z`` of ``logits [..., V]``.

    Memory-frugal: rows are processed ``chunk_size`` at a time, each upcast to float32, so the
    peak extra memory is ``chunk_size * V`` floats instead of a full ``[N, T, V]`` softmax.
    Computed without gradient (a metric, not an entropy bonus).

    >>> entropy_from_logits(torch.zeros(1, 2, 4))  # uniform over 4: log 4
    tensor([[1.3863, 1.3863]])
    >>> entropy_from_logits(torch.tensor([[0.0, -1e9]]), chunk_size=1)  # certain: 0
    tensor([0.])
    """
    flat = logits.reshape(-1, logits.shape[-1])  # [N*T, V]
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)  # [N*T]
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start : start + chunk_size].float()  # [C, V]
        probs = torch.softmax(z, dim=-1)  # [C, V]
        out[start : start + chunk_size] = torch.logsumexp(z, dim=-1) - (probs * z).sum(-1)
    return out.view(logits.shape[:-1])  # [N, T]


@torch.no_grad()
def clip_fractions(
    ratio: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float, eps_high: float
) -> dict[str, Tensor]:
    """Fractions of completion tokens where the PPO clip is active (its gradient is zero).

    ``clip_frac_low``: ratio < 1 - eps_low with a negative advantage; ``clip_frac_high``:
    ratio > 1 + eps_high with a positive advantage (the definitions of TRL's ``clip_ratio/*``
    metrics); ``clip_frac`` their union (verl's ``pg_clipfrac``).

    >>> ratio = torch.tensor([[0.5, 0.5, 1.5, 1.5]])
    >>> adv = torch.tensor([[-1.0, 1.0, 1.0, -1.0]])
    >>> m = clip_fractions(ratio, adv, torch.ones(1, 4), eps_low=0.2, eps_high=0.2)
    >>> {k: round(v.item(), 2) for k, v in m.items()}
    {'clip_frac_low': 0.25, 'clip_frac_high': 0.25, 'clip_frac': 0.5}
    """
    ratio, advantages = ratio.detach(), advantages.detach()
    low = (ratio < 1 - eps_low) & (advantages < 0)  # [N, T]
    high = (ratio > 1 + eps_high) & (advantages > 0)  # [N, T]
    return {
        "clip_frac_low": masked_mean(low.float(), mask),
        "clip_frac_high": masked_mean(high.float(), mask),
        "clip_frac": masked_mean((low | high).float(), mask),
    }


@torch.no_grad()
def sequence_clip_fractions(
    seq_ratio: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float, eps_high: float
) -> dict[str, Tensor]:
    """Clip fractions of a sequence-level ratio (GSPO), counted per sequence, not per token.

    ``seq_ratio [N]`` is each sequence's ratio, ``advantages [N, T]`` its advantage (the mean
    over its completion tokens is taken; GSPO's is constant over a sequence). A sequence is
    low-clipped when ``s_i < 1 - eps_low`` and its advantage is negative, high-clipped when
    ``s_i > 1 + eps_high`` and it is positive; each fraction is over all N rows, as TRL's
    ``clip_ratio/*_mean`` with ``importance_sampling_level="sequence"`` (a ``[B, 1]`` ratio:
    ``x.sum() / x.shape[0]``, so a row without completion tokens counts, and is never clipped).

    >>> seq_ratio = torch.tensor([0.5, 1.5, 1.5, 1.0])
    >>> adv = torch.tensor([[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
    >>> m = sequence_clip_fractions(seq_ratio, adv, mask, eps_low=0.2, eps_high=0.2)
    >>> {k: round(v.item(), 2) for k, v in m.items()}  # row 0 low, row 1 high: 1 of 4 each
    {'clip_frac_low': 0.25, 'clip_frac_high': 0.25, 'clip_frac': 0.5}
    """
    seq_adv = masked_mean(advantages.detach(), mask, dim=-1)  # [N]
    seq_ratio = seq_ratio.detach()
    low = (seq_ratio < 1 - eps_low) & (seq_adv < 0)  # [N]
    high = (seq_ratio > 1 + eps_high) & (seq_adv > 0)  # [N]
    rows = max(seq_ratio.numel(), 1)
    return {
        "clip_frac_low": low.float().sum() / rows,
        "clip_frac_high": high.float().sum() / rows,
        "clip_frac": (low | high).float().sum() / rows,
    }


@torch.no_grad()
def approx_kl(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """Mean k3 estimate of KL(pi_old || pi) over completion tokens: how far the update moved.

    The tokens were sampled from ``pi_old``, so k3 is taken with ``pi_old`` as the sampler.

    >>> approx_kl(torch.tensor([[0.0, -1.0]]), torch.tensor([[0.0, 0.0]]), torch.ones(1, 2))
    tensor(0.1839)
    """
    return masked_mean(k3(old_logp.detach(), logp.detach()), mask)
