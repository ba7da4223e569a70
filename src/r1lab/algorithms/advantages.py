"""Advantage estimators: from rewards (and, for PPO, a critic) to token-level advantages.

One signature, called through ``ADVANTAGES``::

    adv = ADVANTAGES.get(name)(rewards, *, group_size, mask, values=None, **opts)  # [N, T]

(``resolve_algorithm(cfg).advantage`` also offers ``component_rewards [N, C]``, the unweighted
reward of each component, and ``component_weights [C]``; ``normalize_then_sum`` uses those.)
``rewards`` is ``[N]``, ``N = B * G``, grouped contiguously: rows ``i*G .. (i+1)*G - 1`` are the
``G`` completions of prompt ``i``. ``mask [N, T]`` is 1 on completion tokens. Sequence-level
estimators broadcast their ``[N]`` advantage over the mask and put 0 on padding. Options are
keyword-only and strict: an option an estimator does not take is a ``TypeError``.

Groups of size 1 (``group_size=1``) have no peers to compare with, so the group-relative
estimators (``grpo``, ``dr_grpo``, ``rloo``) give them advantage 0, never NaN. This differs from
TRL (``std`` with ddof=1 of one sample is NaN) and from verl (mean 0 and std 1, i.e. the raw
reward becomes the advantage). Use ``reinforce_pp`` for a batch baseline instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.algorithms.aggregation import masked_mean
from r1lab.algorithms.kl import last_token_rewards
from r1lab.registry import Registry

ADVANTAGES: Registry = Registry(
    "advantage_estimator", "(rewards [N], group_size, mask [N, T], values) -> advantages [N, T]"
)

SCALES = ("group", "batch", "none")


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return rewards.view(-1, group_size)  # [B, G]


def _std(x: Tensor, ddof: int, dim: int | None = None) -> Tensor:
    """Std with ``ddof``; 1 where there are too few samples (the centred value is 0 there)."""
    n = x.numel() if dim is None else x.shape[dim]
    if n - ddof <= 0:
        return torch.ones_like(x.mean() if dim is None else x.mean(dim))
    return x.std(correction=ddof) if dim is None else x.std(dim=dim, correction=ddof)


def _broadcast(seq_adv: Tensor, mask: Tensor) -> Tensor:
    return _zero_padding(seq_adv.unsqueeze(-1).expand(mask.shape), mask)  # [N, T]


def _zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    # where, not a product: padding is +0.0, never -0.0 or NaN from an inf/NaN upstream
    return torch.where(mask.bool(), x, torch.zeros_like(x))


@ADVANTAGES.register("grpo")
def grpo(
    rewards: Tensor,
    *,
    group_size: int,
    mask: Tensor,
    values: Tensor | None = None,
    eps: float = 1e-6,
    ddof: int = 1,
    scale: str = "group",
) -> Tensor:
    """Group-relative advantage of GRPO: ``(r_i - mean(group)) / (std + eps)``.

    ``ddof`` is the std's delta degrees of freedom: 1 (default) is the sample std of
    ``torch.std``, which TRL and verl use; 0 is the population std. ``eps`` keeps the division
    finite when a group's rewards are all equal (the numerator is then 0 anyway); default 1e-6
    as verl, TRL uses 1e-4. ``scale`` picks the std: ``"group"`` (the paper), ``"batch"`` (std
    of all N rewards, TRL ``scale_rewards="batch"``), ``"none"`` (no division, = ``dr_grpo``).
    The mean is always the group's. Size-1 groups give 0.

    Reproduces TRL (``eps=1e-4``, ``ddof=1``, ``scale_rewards`` group/batch/none) and verl
    ``adv_estimator=grpo`` (``eps=1e-6``, ``ddof=1``, ``norm_adv_by_std_in_grpo``).

    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
    >>> grpo(torch.tensor([1.0, 0.0, 1.0, 1.0]), group_size=2, mask=mask)  # std([1, 0]) = 0.7071
    tensor([[ 0.7071,  0.7071,  0.0000],
            [-0.7071,  0.0000,  0.0000],
            [ 0.0000,  0.0000,  0.0000],
            [ 0.0000,  0.0000,  0.0000]])
    """
    if scale not in SCALES:
        raise ValueError(f"unknown reward scale {scale!r}; valid: {', '.join(SCALES)}")
    grouped = _grouped(rewards, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group":
        centred = centred / (_std(grouped, ddof, dim=1).unsqueeze(1) + eps)
    elif scale == "batch":
        centred = centred / (_std(grouped.reshape(-1), ddof) + eps)
    return _broadcast(centred.reshape(-1), mask)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(
    rewards: Tensor, *, group_size: int, mask: Tensor, values: Tensor | None = None
) -> Tensor:
    """Dr. GRPO (Liu et al. 2025): ``r_i - mean(group)``, no std division.

    Dividing by the std up-weights prompts that are nearly always or never solved; Dr. GRPO
    drops it (pair it with ``seq_mean_token_sum_norm``). Equals ``grpo(scale="none")``, TRL
    ``scale_rewards="none"``/``False`` and verl ``norm_adv_by_std_in_grpo=False``.

    >>> dr_grpo(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, mask=torch.ones(4, 1))
    tensor([[ 0.7500],
            [-0.2500],
            [-0.2500],
            [-0.2500]])
    """
    return grpo(rewards, group_size=group_size, mask=mask, scale="none")


@ADVANTAGES.register("normalize_then_sum")
def normalize_then_sum(
    rewards: Tensor | None = None,
    *,
    component_rewards: Tensor,
    component_weights: Tensor,
    group_size: int,
    mask: Tensor,
    values: Tensor | None = None,
    eps: float = 1e-4,
    ddof: int = 1,
) -> Tensor:
    """Multi-reward GRPO that normalises each reward before summing (GDPO, Liu et al. 2026).

    ``component_rewards [N, C]`` are the unweighted rewards, one column per component. Each
    column is normalised within its group, ``(r_k - mean_k) / (std_k + eps)``; the columns are
    summed with ``component_weights [C]``; the sum is normalised over the whole batch,
    ``(s - mean(s)) / (std(s) + eps)``. So a component whose group spread is small is not drowned
    by one with a large spread. ``rewards`` (the weighted total) is not used. Reproduces TRL
    ``multi_objective_aggregation="normalize_then_sum"`` (``eps=1e-4``, ``ddof=1``; TRL ignores
    ``scale_rewards`` there, and this estimator does not take it). Size-1 groups give 0 in each
    column, as in TRL. Under several processes the batch statistics are this process's.

    >>> comp = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    >>> normalize_then_sum(component_rewards=comp, component_weights=torch.tensor([1.0, 0.5]),
    ...                    group_size=2, mask=torch.ones(4, 1))  # sums ~ [1, -1, 0.5, -0.5]
    tensor([[ 1.0953],
            [-1.0953],
            [ 0.5476],
            [-0.5476]])
    """
    if component_rewards is None or component_weights is None:
        raise ValueError("normalize_then_sum needs component_rewards [N, C] (each reward "
                         "component, unweighted) and component_weights [C]")
    comp = component_rewards.float() if not component_rewards.is_floating_point() else component_rewards
    weights = component_weights.to(comp)
    if comp.dim() != 2 or weights.shape != comp.shape[1:]:
        raise ValueError(f"component_rewards must be [N, C] and component_weights [C], got "
                         f"{tuple(comp.shape)} and {tuple(weights.shape)}")
    n, c = comp.shape
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rewards do not split into groups of {group_size}")
    grouped = comp.view(-1, group_size, c)  # [B, G, C]
    std_k = _std(grouped, ddof, dim=1).unsqueeze(1)  # [B, 1, C]
    normed = (grouped - grouped.mean(dim=1, keepdim=True)) / (std_k + eps)  # [B, G, C]
    summed = (normed.reshape(n, c) * weights).sum(-1)  # [N]
    advantages = (summed - summed.mean()) / (_std(summed, ddof) + eps)  # [N]
    return _broadcast(advantages, mask)


@ADVANTAGES.register("rloo")
def rloo(rewards: Tensor, *, group_size: int, mask: Tensor, values: Tensor | None = None) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``.

    Equals ``G / (G - 1) * (r_i - mean(group))``; verl ``adv_estimator=rloo``. Size-1 groups
    give 0.

    >>> rloo(torch.tensor([1.0, 0.0, 0.0]), group_size=3, mask=torch.ones(3, 1))
    tensor([[ 1.0000],
            [-0.5000],
            [-0.5000]])
    """
    grouped = _grouped(rewards, group_size)  # [B, G]
    if group_size == 1:
        return _broadcast(torch.zeros_like(grouped.reshape(-1)), mask)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # [B, G]
    return _broadcast((grouped - others).reshape(-1), mask)


def _token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """``[N]`` scores go on the last completion token; ``[N, T]`` token rewards pass through."""
    if rewards.dim() == 2:
        return rewards * mask.to(rewards.dtype)  # [N, T]
    return last_token_rewards(rewards, mask)  # [N, T]


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` over completion tokens, 0 on padding.

    >>> discounted_returns(torch.tensor([[0.0, 0.0, 1.0]]), torch.ones(1, 3), gamma=0.5)
    tensor([[0.2500, 0.5000, 1.0000]])
    """
    m = mask.to(token_rewards.dtype)  # [N, T]
    returns = torch.zeros_like(token_rewards)  # [N, T]
    running = torch.zeros_like(token_rewards[:, 0])  # [N]
    for t in reversed(range(token_rewards.shape[1])):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * m[:, t]  # padding does not carry a return across sequences
    return _zero_padding(returns, mask)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked positions, with the unbiased variance.

    As verl's ``masked_whiten(shift_mean=True)``; 0 on padding, 0 (not NaN) for a single token.

    >>> masked_whiten(torch.tensor([[1.0, 3.0, 7.0]]), torch.tensor([[1, 1, 0]]))
    tensor([[-0.7071,  0.7071,  0.0000]])
    """
    m = mask.to(x.dtype)  # [N, T]
    mean = masked_mean(x, m)
    count = m.sum()
    var = masked_mean((x - mean).square(), m) * count / (count - 1).clamp(min=1)
    return _zero_padding((x - mean) * torch.rsqrt(var + eps), mask)  # [N, T]


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(
    rewards: Tensor,
    *,
    group_size: int,
    mask: Tensor,
    values: Tensor | None = None,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++ (Hu 2025): discounted token returns, whitened over the whole batch.

    No critic and no group: the baseline is the batch mean over all completion tokens (so long
    completions weigh more in it), the scale the batch std. ``rewards`` may be ``[N]`` (put on
    the last completion token) or ``[N, T]`` token rewards (e.g. from ``kl_penalized_rewards``).
    Reproduces verl ``adv_estimator=reinforce_plus_plus``. ``group_size`` is unused.

    >>> mask = torch.tensor([[1, 1], [1, 0]])
    >>> reinforce_pp(torch.tensor([1.0, 0.0]), group_size=1, mask=mask)  # tokens 1, 1, 0
    tensor([[ 0.5774,  0.5774],
            [-1.1547,  0.0000]])
    """
    returns = discounted_returns(_token_rewards(rewards, mask), mask, gamma)  # [N, T]
    return masked_whiten(returns, mask, eps)


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(
    rewards: Tensor,
    *,
    group_size: int,
    mask: Tensor,
    values: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the batch's tokens.

    Reproduces verl ``adv_estimator=reinforce_plus_plus_baseline`` (except size-1 groups: 0
    before whitening here, the raw reward in verl).

    >>> mask = torch.ones(4, 1)
    >>> reinforce_pp_baseline(torch.tensor([1.0, 0.0, 3.0, 3.0]), group_size=2, mask=mask)
    tensor([[ 1.2247],
            [-1.2247],
            [ 0.0000],
            [ 0.0000]])
    """
    centred = dr_grpo(rewards, group_size=group_size, mask=mask)  # [N, T]
    return masked_whiten(centred, mask, eps)


def compute_gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``; the value
    after the last completion token is 0 (the episode ends). Padding positions are skipped, as in
    verl's ``compute_gae_advantage_return``. ``returns = A + V`` are the critic's targets.

    >>> adv, ret = compute_gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]),
    ...                        torch.ones(1, 2), gamma=1.0, lam=0.5)
    >>> adv  # delta = [0, 0.5]; A_0 = 0 + 0.5 * 0.5
    tensor([[0.2500, 0.5000]])
    >>> ret
    tensor([[0.7500, 1.0000]])
    """
    m = mask.to(values.dtype)  # [N, T]
    values = values * m  # [N, T]
    next_value = torch.zeros_like(values[:, 0])  # [N]
    last_adv = torch.zeros_like(values[:, 0])  # [N]
    adv = torch.zeros_like(values)  # [N, T]
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        step_adv = delta + gamma * lam * last_adv
        next_value = torch.where(m[:, t] > 0, values[:, t], next_value)
        last_adv = torch.where(m[:, t] > 0, step_adv, last_adv)
        adv[:, t] = last_adv
    adv = _zero_padding(adv, mask)
    return adv, _zero_padding(adv + values, mask)


@ADVANTAGES.register("gae")
def gae(
    rewards: Tensor,
    *,
    group_size: int,
    mask: Tensor,
    values: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
) -> Tensor:
    """PPO with a critic: token-level GAE advantages, whitened over the batch by default.

    ``values [N, T]`` are the critic's per-token estimates (required). ``rewards`` may be ``[N]``
    (on the last completion token) or ``[N, T]``. Reproduces verl ``adv_estimator=gae``
    (``whiten=True``). The critic's targets come from ``compute_gae(...)[1]``, before whitening.

    >>> gae(torch.tensor([1.0]), group_size=1, mask=torch.ones(1, 2),
    ...     values=torch.tensor([[0.5, 0.5]]), lam=0.5, whiten=False)
    tensor([[0.2500, 0.5000]])
    """
    if values is None:
        raise ValueError("the 'gae' advantage estimator needs critic values [N, T]")
    token_rewards = _token_rewards(rewards, mask).to(values.dtype)  # [N, T]
    adv, _ = compute_gae(token_rewards, values.detach(), mask, gamma=gamma, lam=lam)
    return masked_whiten(adv, mask) if whiten else adv
