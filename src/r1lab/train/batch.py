"""The typed values passed between the stages of a GRPO step.

    sampling -> Sampled (B prompts x G completions, scored) -> TokenBatch (prompt + completion
    tokens, masks) -> Advantages -> the policy update -> the step's metrics

A batch is always whole groups: rows `g*G .. g*G+G-1` answer prompt `g`, so group statistics
never need another batch, and in a multi-process step each rank owns whole groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from r1lab.rewards.compose import RewardBatch
from r1lab.rollout import RolloutBatch
from r1lab.train.common import join_prompt_completion


@dataclass
class Sampled:
    """B prompts, their G completions each, and the completions' rewards."""

    rows: list[dict[str, Any]]  # B
    rollout: RolloutBatch  # N = B * G completions
    rewards: torch.Tensor  # [N] weighted total
    scored: RewardBatch | None = None  # the composer's full report, when not a selection
    #: [N] what decides whether a group has signal (DAPO: accuracy); None = the total reward
    signal: torch.Tensor | None = None
    #: [N, C] each reward component's score, unweighted, in config order (None: not known)
    components: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return len(self.rows)


def _rows(x: torch.Tensor | None, idx: list[int]) -> torch.Tensor | None:
    return None if x is None else x[idx]


def select_groups(s: Sampled, groups: Sequence[int]) -> Sampled:
    """The groups `groups` (prompt indices) of `s`, completions kept contiguous per group."""
    G = s.rollout.n
    idx = [g * G + j for g in groups for j in range(G)]
    r = s.rollout
    rollout = RolloutBatch(
        prompt_ids=[r.prompt_ids[g] for g in groups], completion_ids=r.completion_ids[idx],
        completion_mask=r.completion_mask[idx], logprobs=r.logprobs[idx],
        texts=[r.texts[i] for i in idx], finish_reasons=[r.finish_reasons[i] for i in idx],
        n=G, timings=dict(r.timings), entropy=_rows(r.entropy, idx))
    return Sampled([s.rows[g] for g in groups], rollout, s.rewards[idx],
                   signal=_rows(s.signal, idx), components=_rows(s.components, idx))


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(p is None for p in parts) else torch.cat(list(parts))  # type: ignore[arg-type]


def concat_sampled(parts: Sequence[Sampled], pad_id: int) -> Sampled:
    """One batch from several rounds: completion tensors right-padded to the longest T."""
    T = max(p.rollout.completion_ids.shape[1] for p in parts)

    def pad(x: torch.Tensor, value: float) -> torch.Tensor:  # [n, t] -> [n, T]
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    rs = [p.rollout for p in parts]
    rollout = RolloutBatch(
        prompt_ids=[ids for r in rs for ids in r.prompt_ids],
        completion_ids=torch.cat([pad(r.completion_ids, pad_id) for r in rs]),  # [N, T]
        completion_mask=torch.cat([pad(r.completion_mask, 0) for r in rs]),  # [N, T]
        logprobs=torch.cat([pad(r.logprobs, 0) for r in rs]),  # [N, T]
        texts=[t for r in rs for t in r.texts],
        finish_reasons=[f for r in rs for f in r.finish_reasons],
        n=rs[0].n,
        entropy=_cat([None if r.entropy is None else pad(r.entropy, 0) for r in rs]))
    return Sampled([row for p in parts for row in p.rows], rollout,
                   torch.cat([p.rewards for p in parts]),
                   signal=_cat([p.signal for p in parts]),
                   components=_cat([p.components for p in parts]))


def loss_mask(mask: torch.Tensor, finish_reasons: Sequence[str]) -> torch.Tensor:
    """`mask [N, T]` with the rows of truncated completions (finish reason "length") zeroed:
    DAPO's overlong filtering (TRL's `mask_truncated_completions`), so a chain that was merely
    long is not punished as if it were wrong.

    >>> loss_mask(torch.ones(2, 2), ["stop", "length"])
    tensor([[1., 1.],
            [0., 0.]])
    """
    kept = torch.tensor([f != "length" for f in finish_reasons], dtype=mask.dtype,
                        device=mask.device)  # [N]
    return mask * kept[:, None]


@dataclass
class TokenBatch:
    """Each completion after its (left-padded) prompt: what every forward pass of the step reads.

    `mask` marks the completion tokens; `train_mask` the ones that get a loss (truncated
    completions may be left out: they still count in their group's statistics)."""

    input_ids: torch.Tensor  # [N, L+T]
    attn: torch.Tensor  # [N, L+T]
    pos: torch.Tensor  # [N, L+T]
    prompt_len: int  # L
    mask: torch.Tensor  # [N, T]
    train_mask: torch.Tensor  # [N, T]
    group_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    @property
    def lengths(self) -> torch.Tensor:  # [N] completion lengths
        return self.attn[:, self.prompt_len:].sum(-1)

    @classmethod
    def from_rollout(cls, rollout: RolloutBatch, pad_id: int, mask_truncated: bool = False) -> TokenBatch:
        if not rollout.prompt_ids:  # a rank that kept none of its groups (DAPO) trains on none
            empty = rollout.completion_ids.new_zeros((0, rollout.completion_ids.shape[1]))
            mask = rollout.completion_mask[:0]
            return cls(empty, empty.clone(), empty.clone(), 0, mask, mask, rollout.n)
        input_ids, attn, pos, L = join_prompt_completion(
            rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask, pad_id)
        mask = rollout.completion_mask  # [N, T]
        train_mask = loss_mask(mask, rollout.finish_reasons) if mask_truncated else mask
        return cls(input_ids, attn, pos, L, mask, train_mask, rollout.n)


@dataclass
class Advantages:
    """Stage 3's output: per-token advantages, and what produced them."""

    advantages: torch.Tensor  # [N, T]
    rewards: torch.Tensor  # [N] the rewards they were computed from (KL-penalised if so)
    ref_logp: torch.Tensor | None = None  # [N, T] frozen reference policy, when beta > 0
    values: torch.Tensor | None = None  # [N, T] the critic's, for PPO
    metrics: dict[str, float] = field(default_factory=dict)
