"""The rollout engine is not the trainer: measuring and correcting the gap between them.

An engine (vLLM, a bf16 sampler, a copy of the weights that a sync should have refreshed)
samples from pi_rollout; the trainer computes pi_train of the same tokens. Two things here:

* ``mismatch_kl(train_logp, rollout_logp, mask)``: the k3 estimate of KL(pi_rollout ||
  pi_train) per sampled token, averaged: ~1e-6 when the two agree to float error, >1e-2 after a
  weight sync that silently failed (`r1lab.rollout.probe` logs it as ``rollout/mismatch_kl``);
* importance weights for the policy loss (``ROLLOUT_CORRECTIONS``, config
  ``rollout.correction``), with ratio ``rho = pi_train_old / pi_rollout`` per token, computed
  without gradient:

  - ``tis``: truncated importance sampling, ``min(rho, cap)`` (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"; verl
    ``rollout_is: token``, TRL ``vllm_importance_sampling_correction``);
  - ``mis``: masked importance sampling, ``rho`` where ``rho <= cap``, else 0: a token the
    trainer finds far likelier than the engine did is dropped rather than capped;
  - ``none``: weight 1.

One signature::

    w = ROLLOUT_CORRECTIONS.get(name)(train_logp, rollout_logp, mask, cap=2.0)  # [N, T]
    per_token_loss = per_token_loss * w
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.registry import Registry

ROLLOUT_CORRECTIONS: Registry = Registry(
    "rollout_correction",
    "importance weights [N, T] for the rollout-trainer mismatch from (train_logp, rollout_logp)")

#: log-ratios are clamped before exp (as verl does), so one wild token cannot overflow
LOG_RATIO_CLAMP = 20.0


def mismatch_kl(train_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked tokens of k3 = (r - 1) - log r, r = pi_train / pi_rollout: an
    unbiased, non-negative estimate of KL(pi_rollout || pi_train) from tokens pi_rollout drew.

    >>> lp = torch.tensor([[-1.0, -2.0, -0.5]])
    >>> mismatch_kl(lp, lp, torch.ones(1, 3))
    tensor(0.)
    >>> # log r = -0.5 and +0.5: k3 = (e^-0.5 - 1 + 0.5 + e^0.5 - 1 - 0.5) / 2 = (0.1065 + 0.1487) / 2
    >>> round(mismatch_kl(lp, lp + torch.tensor([[0.5, -0.5, 0.0]]), torch.tensor([[1, 1, 0]])).item(), 4)
    0.1276
    """
    log_r = (train_logp - rollout_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T]
    k3 = torch.expm1(log_r) - log_r
    m = mask.to(k3.dtype)
    return (k3 * m).sum() / m.sum().clamp(min=1)


def _ratio(train_logp: Tensor, rollout_logp: Tensor) -> Tensor:
    return torch.exp((train_logp - rollout_logp).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


@ROLLOUT_CORRECTIONS.register("none")
def no_correction(train_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *,
                  cap: float = 2.0) -> Tensor:
    """Weight 1 everywhere (the rollout is taken as on-policy).

    >>> no_correction(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    tensor([[1., 1.]])
    """
    return torch.ones_like(train_logp)


@ROLLOUT_CORRECTIONS.register("tis")
def truncated_is(train_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *,
                 cap: float = 2.0) -> Tensor:
    """Token-level truncated importance weight min(pi_train / pi_rollout, cap), no gradient.

    >>> truncated_is(torch.log(torch.tensor([[0.5, 0.9, 0.2]])),
    ...              torch.log(torch.tensor([[0.5, 0.3, 0.4]])), torch.ones(1, 3))
    tensor([[1.0000, 2.0000, 0.5000]])
    """
    return _ratio(train_logp, rollout_logp).clamp(max=cap) * mask.to(train_logp.dtype)


@ROLLOUT_CORRECTIONS.register("mis")
def masked_is(train_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *,
              cap: float = 2.0) -> Tensor:
    """Token-level masked importance weight: pi_train / pi_rollout where it is <= cap, else 0.

    >>> masked_is(torch.log(torch.tensor([[0.5, 0.9, 0.2]])),
    ...           torch.log(torch.tensor([[0.5, 0.3, 0.4]])), torch.ones(1, 3))
    tensor([[1.0000, 0.0000, 0.5000]])
    """
    rho = _ratio(train_logp, rollout_logp)
    return torch.where(rho <= cap, rho, torch.zeros_like(rho)) * mask.to(train_logp.dtype)
