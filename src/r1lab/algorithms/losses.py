"""Policy losses (per token, to be minimised) and PPO's clipped value loss.

One signature, called through ``POLICY_LOSSES``::

    per_token_loss, metrics = POLICY_LOSSES.get(name)(logp, old_logp, advantages, mask, **opts)

``logp`` carries the gradient; ``old_logp`` (the sampling policy's log-probs), ``advantages`` and
``mask`` are ``[N, T]`` and treated as constants. Add ``beta * kl`` to the per-token loss for a KL
term in the loss, then reduce with an aggregation from ``AGGREGATIONS``. Metrics are scalar
tensors over the completion tokens of this call (no gradient).

The log ratio is clamped to [-20, 20] before ``exp``, as verl does, so a stale token can not
overflow the ratio to inf.

Peer settings: ``clip`` is TRL's ``loss_type`` grpo/bnpo/dr_grpo/dapo surrogate (``epsilon``,
``epsilon_high``, two-sided ``delta``) and verl's ``vanilla`` (``dual_clip_c`` = verl's
``clip_ratio_c``); ``gspo`` is TRL ``importance_sampling_level="sequence"`` and verl
``loss_mode=gspo``; ``cispo`` is verl ``loss_mode=cispo`` (and TRL ``loss_type="cispo"`` with
``eps_low=1``, ``eps_high = epsilon_high - 1``); ``pg`` is REINFORCE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.algorithms.aggregation import masked_mean
from r1lab.algorithms.metrics import approx_kl, clip_fractions, sequence_clip_fractions
from r1lab.registry import Registry

POLICY_LOSSES: Registry = Registry(
    "policy_loss", "(logp, old_logp, advantages, mask [N, T]) -> (per-token loss [N, T], metrics)"
)

LOG_RATIO_CLAMP = 20.0
#: verl caps the sequence-level log ratio of GSPO at 10
GSPO_LOG_RATIO_MAX = 10.0

Metrics = dict[str, Tensor]


def _clipped_surrogate(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None,
    delta: float | None = None,
) -> tuple[Tensor, Metrics]:
    """``-min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)``, optionally dual-clipped, with
    ``r = min(ratio, delta)`` in the unclipped term when ``delta`` is set (TRL's two-sided clip)."""
    capped = ratio if delta is None else ratio.clamp(max=delta)  # [N, T]
    unclipped = -advantages * capped  # [N, T]
    clipped = -advantages * ratio.clamp(1 - eps_low, 1 + eps_high)  # [N, T]
    loss = torch.maximum(unclipped, clipped)  # [N, T]
    # TRL counts its clip metrics on the delta-capped ratio
    metrics = clip_fractions(capped, advantages, mask, eps_low=eps_low, eps_high=eps_high)
    if delta is not None:
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        bound = (advantages < 0) & (ratio.detach() > delta)  # [N, T]: loss capped at -delta * A
        metrics["delta_clip_frac"] = masked_mean(bound.float(), mask)
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
        dual_capped = torch.minimum(loss, -advantages * dual_clip_c)  # [N, T]
        loss = torch.where(advantages < 0, dual_capped, loss)  # [N, T]
        dual = (advantages < 0) & (ratio.detach() > dual_clip_c)  # [N, T]
        metrics["dual_clip_frac"] = masked_mean(dual.float(), mask)
    return loss, metrics


@POLICY_LOSSES.register("clip")
def clip(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip_c: float | None = None,
    delta: float | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO's clipped surrogate with token ratio ``pi / pi_old``, the GRPO loss.

    ``eps_high`` defaults to ``eps_low`` (symmetric, PPO/GRPO); DAPO's clip-higher uses
    ``eps_low=0.2, eps_high=0.28``. ``dual_clip_c`` (> 1, e.g. 3) caps the loss of a token with a
    negative advantage at ``-c * A``, so a huge ratio on a bad token can not blow up the update
    (Ye et al. 2020). ``delta`` is TRL's two-sided clip (INTELLECT-2): the unclipped term uses
    ``min(ratio, delta)``, so a negative-advantage token's loss is capped at ``-delta * A``
    (for ``delta > 1 + eps_high``, the same loss as ``dual_clip_c = delta``). Reproduces TRL's
    ``per_token_loss`` (``epsilon``, ``epsilon_high``, ``delta``, before the KL term; its
    ``clip_ratio/*`` metrics, taken on the delta-capped ratio) and verl's
    ``compute_policy_loss`` (``clip_ratio_low/high``, ``clip_ratio_c``).

    >>> logp = torch.log(torch.tensor([[1.5, 0.5, 4.0]]))  # old_logp = 0: ratios 1.5, 0.5, 4
    >>> adv = torch.tensor([[1.0, -1.0, -1.0]])
    >>> loss, m = clip(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), eps_high=0.28)
    >>> loss  # -min(1.5, 1.28), -min(-0.5, -0.8), -min(-4, -1.2)
    tensor([[-1.2800,  0.8000,  4.0000]])
    >>> clip(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), dual_clip_c=3.0)[0]
    tensor([[-1.2000,  0.8000,  3.0000]])
    >>> round(m["clip_frac_high"].item(), 4), round(m["clip_frac_low"].item(), 4)
    (0.3333, 0.3333)
    >>> clip(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), delta=2.0)[0]  # -min(-2, -1.2)
    tensor([[-1.2000,  0.8000,  2.0000]])
    """
    eps_high = eps_low if eps_high is None else eps_high
    log_ratio = (logp - old_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T]
    ratio = torch.exp(log_ratio)  # [N, T]
    loss, metrics = _clipped_surrogate(ratio, advantages, mask, eps_low, eps_high, dual_clip_c,
                                       delta)
    metrics["approx_kl"] = approx_kl(logp, old_logp, mask)
    return loss, metrics


@POLICY_LOSSES.register("dual_clip")
def dual_clip(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip_c: float = 3.0,
) -> tuple[Tensor, Metrics]:
    """``clip`` with the dual clip on by default at verl's ``clip_ratio_c = 3``.

    >>> ratio = torch.tensor([[5.0]])
    >>> dual_clip(ratio.log(), torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1))[0]
    tensor([[3.]])
    """
    return clip(
        logp,
        old_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        dual_clip_c=dual_clip_c,
    )


@POLICY_LOSSES.register("gspo")
def gspo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> tuple[Tensor, Metrics]:
    """GSPO (Zheng et al. 2025): the clip acts on the sequence ratio, the geometric mean of the
    token ratios ``s_i = exp(mean_t log(pi / pi_old))``.

    Written in the GSPO-token form: every token's ratio has the value ``s_i`` but its own
    gradient, ``sg[s_i] * pi_t / sg[pi_t]``. With advantages constant over a sequence and the
    ``seq_mean_token_mean`` aggregation this is exactly GSPO's sequence objective; token-level
    advantages also work. The default clip range is the paper's (3e-4, 4e-4). Reproduces verl
    ``policy_loss.loss_mode=gspo`` (log ratio capped at 10) and, for sequence-level advantages,
    TRL ``importance_sampling_level="sequence"`` in value and gradient under any aggregation
    (verl and the paper pair it with ``seq_mean_token_mean``). The clip fractions count
    sequences, as TRL's do at the sequence level (``sequence_clip_fractions``).

    >>> logp = torch.log(torch.tensor([[2.0, 0.5, 9.0]]))  # seq ratio sqrt(2 * 0.5) = 1
    >>> mask = torch.tensor([[1, 1, 0]])  # the padded 9 is ignored
    >>> gspo(logp, torch.zeros(1, 3), torch.full((1, 3), 2.0), mask)[0]  # -1 * A everywhere
    tensor([[-2., -2., -2.]])
    """
    mask_f = mask.to(logp.dtype)  # [N, T]
    seq_log_ratio = masked_mean(logp - old_logp.detach(), mask_f, dim=-1)  # [N]
    log_ratio = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)  # [N, T]
    ratio = torch.exp(log_ratio.clamp(max=GSPO_LOG_RATIO_MAX))  # [N, T]
    loss, _ = _clipped_surrogate(ratio, advantages, mask, eps_low, eps_high, None)
    seq_ratio = torch.exp(seq_log_ratio.detach().clamp(max=GSPO_LOG_RATIO_MAX))  # [N]
    metrics = sequence_clip_fractions(seq_ratio, advantages, mask, eps_low=eps_low,
                                      eps_high=eps_high)
    metrics["approx_kl"] = approx_kl(logp, old_logp, mask)
    return loss, metrics


@POLICY_LOSSES.register("cispo")
def cispo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[Tensor, Metrics]:
    """CISPO (MiniMax-M1, Chen et al. 2025): ``-sg[clip(ratio, 1 - eps_low, 1 + eps_high)] * A *
    log pi``.

    The importance weight is clipped and detached, and the gradient flows through ``log pi``, so
    a token whose ratio is clipped still gets its gradient (scaled by the bound) where PPO's clip
    would zero it. Reproduces verl ``policy_loss.loss_mode=cispo`` (``clip_ratio_low/high``) and
    TRL ``loss_type="cispo"``, whose weight is ``min(ratio, epsilon_high)`` with no lower bound:
    ``eps_low=1.0`` (bound 0, never reached) and ``eps_high = epsilon_high - 1`` (ScaleRL's
    recommended ``epsilon_high=5`` is ``eps_high=4``). Metrics: ``clip_frac``, tokens whose weight
    was clipped (verl); ``cispo_clip_frac``, tokens above the upper bound with a positive
    advantage (TRL's ``cispo_clip_ratio``).

    >>> logp = torch.log(torch.tensor([[2.0, 0.5, 1.0]]))  # old_logp = 0: ratios 2, 0.5, 1
    >>> loss, m = cispo(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3))
    >>> loss  # -1.2 * 1 * log 2, -0.8 * (-1) * log 0.5, -1 * 2 * log 1
    tensor([[-0.8318, -0.5545, -0.0000]])
    >>> round(m["clip_frac"].item(), 4), round(m["cispo_clip_frac"].item(), 4)
    (0.6667, 0.3333)
    """
    log_ratio = (logp - old_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T]
    ratio = torch.exp(log_ratio).detach()  # [N, T]
    weight = ratio.clamp(1 - eps_low, 1 + eps_high)  # [N, T], no gradient
    loss = -weight * advantages * logp  # [N, T]
    metrics = {
        "clip_frac": masked_mean((weight != ratio).float(), mask),
        "cispo_clip_frac": masked_mean(((ratio > 1 + eps_high) & (advantages > 0)).float(), mask),
        "approx_kl": approx_kl(logp, old_logp, mask),
    }
    return loss, metrics


@POLICY_LOSSES.register("pg")
def pg(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Metrics]:
    """Plain policy gradient (REINFORCE): ``-A * log pi``, no ratio, no clip.

    The gradient equals the clipped loss's at ``pi = pi_old`` (one update per batch); the loss
    *value* is not comparable with the ratio losses. ``old_logp`` only feeds ``approx_kl``.

    >>> pg(torch.tensor([[-1.0, -2.0]]), torch.zeros(1, 2), torch.tensor([[1.0, -0.5]]),
    ...    torch.ones(1, 2))[0]
    tensor([[ 1., -1.]])
    """
    return -advantages * logp, {"approx_kl": approx_kl(logp, old_logp, mask)}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range: float | None = 0.2,
) -> tuple[Tensor, Metrics]:
    """PPO's clipped critic loss, per token: ``0.5 * max((V - R)^2, (V_clip - R)^2)``.

    ``V_clip = V_old + clip(V - V_old, -clip_range, clip_range)``; ``clip_range=None`` gives the
    plain squared error. Reduce it with an aggregation as the policy loss. Reproduces verl
    ``compute_value_loss`` (``cliprange_value``); metric ``vf_clip_frac`` as verl's.

    >>> loss, m = value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]),
    ...                      torch.tensor([[1.0, 1.0]]), torch.ones(1, 2))
    >>> loss  # 0.5 * max(0, 0.8^2), 0.5 * max(1, 1)
    tensor([[0.3200, 0.5000]])
    >>> m["vf_clip_frac"]
    tensor(0.5000)
    """
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns).square()  # [N, T]
    if clip_range is None:
        return 0.5 * unclipped, {"vf_clip_frac": torch.zeros((), device=values.device)}
    v_clip = old_values + (values - old_values).clamp(-clip_range, clip_range)  # [N, T]
    clipped = (v_clip - returns).square()  # [N, T]
    frac = masked_mean((clipped > unclipped).float().detach(), mask)
    return 0.5 * torch.maximum(unclipped, clipped), {"vf_clip_frac": frac}
