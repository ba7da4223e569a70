"""Pure tensor functions of RL for LLMs: advantages, policy losses, loss aggregation, KL.

Each kind has one registry; the trainer looks components up by the name in the config, bound to
their validated options, and never branches on algorithm names::

    from r1lab.algorithms import resolve_algorithm

    alg = resolve_algorithm(cfg.algorithm)  # an option the chosen function lacks is an error
    adv = alg.advantage(rewards=r, component_rewards=rc, component_weights=w, group_size=G,
                        mask=mask, values=None)  # [N, T]
    per_token, metrics = alg.loss(logp=logp, old_logp=old_logp, advantages=adv, mask=mask)
    if alg.kl is not None:  # beta > 0
        per_token = per_token + beta * alg.kl(logp=logp, ref_logp=ref, old_logp=old_logp, mask=mask)
    loss = alg.aggregation(per_token=per_token, mask=mask, num_tokens=global_tokens,
                           num_seqs=global_seqs, norm_len=max_new_tokens)  # scalar

Each call passes the function the inputs its signature names (see ``options.INPUTS``) plus the
config options it takes (``options.OPTIONS`` maps ``algorithm.*`` keys to parameters).

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
    sequence_clip_fractions,
    zero_signal_groups,
)
from r1lab.algorithms.mismatch import ROLLOUT_CORRECTIONS, mismatch_kl
from r1lab.algorithms.options import (
    INPUTS,
    OPTIONS,
    Algorithm,
    Chosen,
    OptionError,
    choose,
    resolve_algorithm,
)

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "INPUTS",
    "OPTIONS",
    "Algorithm",
    "Chosen",
    "OptionError",
    "choose",
    "resolve_algorithm",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "ROLLOUT_CORRECTIONS",
    "mismatch_kl",
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
    "sequence_clip_fractions",
    "value_loss",
    "zero_signal_groups",
]
