"""Per-token estimators of KL(pi || pi_ref) from the log-probs of tokens sampled from pi.

One signature, called through ``KL_ESTIMATORS`` (or ``resolve_algorithm(cfg).kl``, which also
offers ``old_logp`` and ``mask``)::

    kl = KL_ESTIMATORS.get(name)(logp, ref_logp, **opts)  # [N, T]

Names follow John Schulman's note "Approximating KL Divergence" (2020), with
``log r = ref_logp - logp``:

* ``k1 = -log r``: unbiased, high variance, can be negative per token;
* ``k2 = (log r)^2 / 2``: biased, low variance, >= 0;
* ``k3 = (r - 1) - log r``: unbiased, low variance, >= 0; the one GRPO uses (DeepSeekMath eq. 4).

Used in the loss (``per_token_loss + beta * kl``, as GRPO does) or subtracted from the reward
(``kl_penalized_rewards``, as PPO-RLHF does). The padding positions are left as computed; mask
them when aggregating.

Peer settings: ``k3(clamp=10)`` is verl ``low_var_kl``; ``k3(clamp=None)`` TRL's
``per_token_kl`` before 1.16's default correction, and ``k3(clamp=None, bias_correction=True)``
TRL 1.16's default (``use_bias_correction_kl=True``: k3 times the importance ratio).
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.registry import Registry

KL_ESTIMATORS: Registry = Registry(
    "kl_estimator", "per-token KL(pi || pi_ref) from (logp, ref_logp) -> [N, T]"
)

#: verl clamps the log ratio before ``exp`` and the k3 value after it ("low_var_kl")
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


@KL_ESTIMATORS.register("k1")
def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``logp - ref_logp`` (verl ``kl_penalty="kl"``/``"k1"``).

    >>> k1(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]]))
    tensor([[ 1., -1.]])
    """
    return logp - ref_logp  # [N, T]


@KL_ESTIMATORS.register("k2")
def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``(logp - ref_logp)^2 / 2`` (verl ``"mse"``/``"k2"``).

    >>> k2(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]]))
    tensor([[0.5000, 0.5000]])
    """
    return 0.5 * (logp - ref_logp).square()  # [N, T]


@KL_ESTIMATORS.register("k3")
def k3(
    logp: Tensor,
    ref_logp: Tensor,
    *,
    old_logp: Tensor | None = None,
    clamp: float | None = K3_CLAMP,
    bias_correction: bool = False,
) -> Tensor:
    """``exp(ref_logp - logp) - (ref_logp - logp) - 1``, the GRPO estimator.

    Reproduces verl ``kl_penalty="low_var_kl"`` exactly: the log ratio is clamped to
    [-20, 20] before ``exp`` and the result to [-10, 10] (``clamp=None`` drops the second clamp and
    gives TRL's unclamped ``per_token_kl``; the two agree whenever k3 <= 10).

    ``bias_correction=True`` multiplies k3 by the importance ratio ``exp(logp - sg[old_logp])``
    (DeepSeek-V3.2; TRL 1.16's default ``use_bias_correction_kl=True``): the tokens were sampled
    from ``pi_old``, so this makes the KL's gradient the unbiased reverse-KL gradient. It changes
    the gradient even on-policy, where the ratio's value is 1 but its gradient is
    ``d log pi``. The log ratio is clamped to [-20, 20] before ``exp``, as in the losses. TRL
    with ``importance_sampling_level="sequence"`` multiplies by the sequence ratio instead; here
    it is always the token ratio.

    >>> k3(torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.0, 0.0]]))  # e - 1 - 1
    tensor([[0.0000, 0.7183]])
    >>> k3(torch.tensor([[-30.0]]), torch.tensor([[0.0]]))  # would be e^20 - 21: clamped
    tensor([[10.]])
    >>> k3(torch.tensor([[-1.0]]), torch.tensor([[0.0]]), old_logp=torch.tensor([[-1.0 - 0.5]]),
    ...    bias_correction=True)  # (e - 2) * e^0.5
    tensor([[1.1842]])
    """
    log_r = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T]
    kl = torch.exp(log_r) - log_r - 1  # [N, T]
    kl = kl if clamp is None else kl.clamp(-clamp, clamp)
    if not bias_correction:
        return kl
    if old_logp is None:
        raise ValueError("k3 with bias_correction needs old_logp (the sampling policy's log-probs)")
    log_is = (logp - old_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T]
    return kl * torch.exp(log_is)  # [N, T]


def kl_penalized_rewards(
    rewards: Tensor, kl: Tensor, mask: Tensor, *, beta: float, token_level: bool = False
) -> Tensor:
    """Subtract ``beta * kl`` from the reward instead of adding it to the loss.

    ``rewards [N]`` are sequence scores, ``kl [N, T]`` a per-token estimate (usually ``k1``,
    computed without gradient). With ``token_level=False`` the result is ``[N]``:
    ``r_i - beta * sum_t kl_it``, ready for any sequence-level estimator (``grpo``, ``rloo``...).
    With ``token_level=True`` it is ``[N, T]``: ``-beta * kl_it`` on every completion token and the
    score added on the last one, as verl's ``apply_kl_penalty`` builds it, for ``gae`` and
    ``reinforce_pp``, which accept token-level rewards.

    >>> kl = torch.tensor([[0.5, 1.0, 9.0], [2.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> kl_penalized_rewards(torch.tensor([1.0, 0.0]), kl, mask, beta=0.1)
    tensor([ 0.8500, -0.2000])
    >>> kl_penalized_rewards(torch.tensor([1.0, 0.0]), kl, mask, beta=0.1, token_level=True)
    tensor([[-0.0500,  0.9000,  0.0000],
            [-0.2000,  0.0000,  0.0000]])
    """
    m = mask.to(kl.dtype)  # [N, T]
    penalty = beta * kl.detach() * m  # [N, T]
    if not token_level:
        return rewards - penalty.sum(-1)  # [N]
    return last_token_rewards(rewards, mask).to(kl.dtype) - penalty  # [N, T]


def last_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence score ``[N]`` on its last completion token: ``[N, T]``.

    Works for right and left padding; a row without completion tokens gets nothing.

    >>> last_token_rewards(torch.tensor([1.0, 2.0]), torch.tensor([[1, 1, 0], [0, 1, 1]]))
    tensor([[0., 1., 0.],
            [0., 0., 2.]])
    """
    m = mask.to(torch.long)  # [N, T]
    is_last = (m.cumsum(-1) == m.sum(-1, keepdim=True)) & m.bool()  # [N, T]
    return rewards.unsqueeze(-1) * is_last.to(rewards.dtype)  # [N, T]
