"""DAPO's batch-level extras for the GRPO step (Yu et al. 2025), and the entropy it watches.

* **Dynamic sampling**: a group whose G rewards are all equal has zero group-relative advantage,
  so it adds nothing to the gradient but still dilutes the token normaliser. `fill_batch` drops
  such groups and samples more prompts until B groups with signal are kept, with at most
  `max_refill_rounds` extra rollout rounds per step (DAPO's `max_num_gen_batches`); if the
  budget runs out the step trains on the groups it has (the first round if none).
* **Overlong filtering**: `loss_mask` zeroes the loss of completions cut at `max_new_tokens`,
  so a reasoning chain that was merely long is not punished as if it were wrong (TRL's
  `mask_truncated_completions`). The soft alternative is the `overlong` reward.
* **Entropy**: clip-higher exists to stop entropy collapse, so the step logs the policy's
  entropy on a few sampled rows (`sampled_entropy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from r1lab.algorithms import entropy_from_logits, masked_mean, zero_signal_groups
from r1lab.rewards.compose import RewardBatch
from r1lab.rollout import RolloutBatch

#: completions whose entropy is measured each step: a no-grad forward on these rows only
ENTROPY_ROWS = 16


@dataclass
class Sampled:
    """B prompts, their G completions each, and the completions' total rewards."""

    rows: list[dict[str, Any]]  # B
    rollout: RolloutBatch  # N = B * G completions
    rewards: torch.Tensor  # [N]
    scored: RewardBatch | None = None  # the composer's full report, when not a selection
    #: [N] what decides whether a group has signal (DAPO: accuracy); None = the total reward
    signal: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return len(self.rows)


def select_groups(s: Sampled, groups: Sequence[int]) -> Sampled:
    """The groups `groups` (prompt indices) of `s`, completions kept contiguous per group."""
    G = s.rollout.n
    idx = [g * G + j for g in groups for j in range(G)]
    r = s.rollout
    rollout = RolloutBatch(
        prompt_ids=[r.prompt_ids[g] for g in groups], completion_ids=r.completion_ids[idx],
        completion_mask=r.completion_mask[idx], logprobs=r.logprobs[idx],
        texts=[r.texts[i] for i in idx], finish_reasons=[r.finish_reasons[i] for i in idx],
        n=G, timings=dict(r.timings), entropy=None if r.entropy is None else r.entropy[idx])
    return Sampled([s.rows[g] for g in groups], rollout, s.rewards[idx],
                   signal=None if s.signal is None else s.signal[idx])


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
        entropy=(None if any(r.entropy is None for r in rs)
                 else torch.cat([pad(r.entropy, 0) for r in rs])))
    return Sampled([row for p in parts for row in p.rows], rollout,
                   torch.cat([p.rewards for p in parts]),
                   signal=(None if any(p.signal is None for p in parts)
                           else torch.cat([p.signal for p in parts])))


def fill_batch(
    sample: Callable[[int], Sampled], *, batch_groups: int, max_refill_rounds: int, pad_id: int,
) -> tuple[Sampled, Sampled, int]:
    """DAPO dynamic sampling -> (first round as sampled, batch to train on, extra rounds used).

    `sample(round)` draws B fresh prompts and their G completions. Groups with signal (values of
    `Sampled.signal`, DAPO's accuracy, or else the total rewards, not all equal) are kept round
    after round until `batch_groups` are kept (the surplus of the
    last round is dropped) or `max_refill_rounds` extra rounds are spent. The first round is
    returned too: it is an unfiltered on-policy sample, so reward curves stay comparable with
    runs without dynamic sampling.
    """
    first = sample(0)
    kept: list[Sampled] = []
    count, rounds, current = 0, 0, first
    while True:
        values = current.rewards if current.signal is None else current.signal
        signal = ~zero_signal_groups(values, current.rollout.n)[:: current.rollout.n]
        groups = signal.nonzero().flatten().tolist()[: batch_groups - count]
        if groups:
            kept.append(select_groups(current, groups))
            count += len(groups)
        if count >= batch_groups or rounds >= max_refill_rounds:
            break
        rounds += 1
        current = sample(rounds)
    if not kept:  # every group of every round was zero-signal: train on the first round, as
        return first, first, rounds  # plain GRPO would (its advantages are all 0)
    return first, concat_sampled(kept, pad_id), rounds


def loss_mask(mask: torch.Tensor, finish_reasons: Sequence[str]) -> torch.Tensor:
    """`mask [N, T]` with the rows of truncated completions (finish reason "length") zeroed.

    >>> loss_mask(torch.ones(2, 2), ["stop", "length"])
    tensor([[1., 1.],
            [0., 0.]])
    """
    kept = torch.tensor([f != "length" for f in finish_reasons], dtype=mask.dtype,
                        device=mask.device)  # [N]
    return mask * kept[:, None]


@torch.inference_mode()
def sampled_entropy(
    model, input_ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, prompt_len: int,
    mask: torch.Tensor, temperature: float = 1.0, rows: int = ENTROPY_ROWS,
) -> float:
    """Mean entropy of the policy's next-token distribution over the completion tokens of
    `rows` completions spread evenly over the batch (one no-grad forward on those rows only)."""
    N = input_ids.shape[0]
    if N == 0 or mask.sum() == 0:
        return 0.0
    pick = torch.linspace(0, N - 1, min(rows, N)).round().long().unique()  # [n]
    T = input_ids.shape[1] - prompt_len
    logits = model(input_ids=input_ids[pick], attention_mask=attn[pick], position_ids=pos[pick],
                   logits_to_keep=T + 1, use_cache=False).logits[:, :-1]  # [n, T, V]
    if temperature not in (0, 1):
        logits = logits / temperature
    return masked_mean(entropy_from_logits(logits, chunk_size=256), mask[pick]).item()
