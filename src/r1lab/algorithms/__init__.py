"""Pure tensor functions of RL for LLMs: advantages, policy losses, loss aggregation, KL.

Each kind has one registry and one signature; the trainer looks components up by the name in
the config and never branches on algorithm names::

    from r1lab.algorithms import ADVANTAGES, POLICY_LOSSES, AGGREGATIONS, KL_ESTIMATORS

    adv = ADVANTAGES.get(name)(rewards, group_size=G, mask=mask, values=None, **opts)  # [N, T]
    per_token_loss, metrics = POLICY_LOSSES.get(name)(logp, old_logp, adv, mask, **opts)
    per_token_loss = per_token_loss + beta * KL_ESTIMATORS.get("k3")(logp, ref_logp)  # [N, T]
    loss = AGGREGATIONS.get(name)(per_token_loss, mask, num_tokens=global_tokens)  # scalar

Peer recipes as r1lab settings (each function's docstring names the setting it reproduces):

* TRL GRPO: ``grpo(eps=1e-4, ddof=1)``, ``clip``, k3 (``clamp=None``), ``loss_type`` grpo ->
  ``seq_mean_token_mean``, bnpo -> ``token_mean``, dr_grpo -> ``seq_mean_token_sum_norm``
  (``norm_len=max_completion_length``), dapo -> ``token_mean`` with the global token count.
* verl GRPO: ``grpo(eps=1e-6, ddof=1)``, ``dual_clip`` (c = 3), k3, ``token_mean``.
* DAPO: ``clip(eps_low=0.2, eps_high=0.28)``, ``token_mean``, no KL, drop
  ``zero_signal_groups``.

Doctests: ``tests/algorithms/test_doctests.py`` runs every example in these modules.
"""

from r1lab.algorithms.advantages import ADVANTAGES, compute_gae, discounted_returns, masked_whiten
from r1lab.algorithms.aggregation import AGGREGATIONS, masked_mean, masked_sum
from r1lab.algorithms.kl import KL_ESTIMATORS, kl_penalized_rewards, last_token_rewards
from r1lab.algorithms.losses import POLICY_LOSSES, value_loss
from r1lab.algorithms.metrics import (
    approx_kl,
    clip_fractions,
    entropy_from_logits,
    zero_signal_groups,
)

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "approx_kl",
    "clip_fractions",
    "compute_gae",
    "discounted_returns",
    "entropy_from_logits",
    "kl_penalized_rewards",
    "last_token_rewards",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "value_loss",
    "zero_signal_groups",
]
