"""Stage 3 of the GRPO step: per-token advantages from the rewards.

GRPO normalises each completion's reward within its group (no critic); the estimator is the
registered function `algorithm.advantage` (`r1lab.algorithms.advantages`), which gets every input
it names: the totals, each reward component (for multi-reward normalisation), the group size,
the completion mask and, for PPO, the critic's values (GAE). With `algorithm.kl_in_reward` the
KL to the reference is subtracted from the reward first (a reward penalty, not a loss term).
"""

from __future__ import annotations

import torch

from r1lab.algorithms import Algorithm
from r1lab.train.batch import Advantages, Sampled, TokenBatch


def compute_advantages(alg: Algorithm, batch: Sampled, tokens: TokenBatch, *,
                       ref_logp: torch.Tensor | None = None, values: torch.Tensor | None = None,
                       beta: float = 0.0, kl_in_reward: bool = False,
                       component_weights: torch.Tensor | None = None) -> Advantages:
    """Advantages [N, T] of the batch's completions, and the rewards they came from."""
    rewards = batch.rewards  # [N]
    mask = tokens.mask  # [N, T]
    if ref_logp is not None and kl_in_reward and alg.kl is not None:
        logp = batch.rollout.logprobs  # the sampler's: the policy that sampled, ratio 1
        kl_seq = (alg.kl(logp=logp, ref_logp=ref_logp, old_logp=logp, mask=mask) * mask).sum(-1)  # [N]
        rewards = rewards - beta * kl_seq
    advantages = alg.advantage(rewards=rewards, component_rewards=batch.components,
                               component_weights=component_weights, group_size=tokens.group_size,
                               mask=mask, values=values)  # [N, T]
    return Advantages(advantages, rewards, ref_logp=ref_logp, values=values)
