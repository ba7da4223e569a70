"""Stage 2 of the GRPO step: score every completion with the rule-based rewards.

The rewards see each completion with its prompt's row (the gold answer, tests, ...), plus the
completion's token count, which length rewards (DAPO's `overlong`) read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from r1lab.rewards.compose import RewardBatch
from r1lab.rollout import RolloutBatch
from r1lab.train.batch import Sampled

#: (completions, their rows) -> RewardBatch: a `RewardComposer`, or any callable like it
Rewards = Callable[[list[str], list[dict[str, Any]]], RewardBatch]


def score(rewards: Rewards, rows: Sequence[dict[str, Any]], rollout: RolloutBatch, *,
          signal_key: str | None = None) -> Sampled:
    """The rollout's completions scored: totals [N], components [N, C] (unweighted, in the
    rewards' order), and the DAPO signal (the `signal_key` component, when there is one)."""
    G = rollout.n
    lengths = rollout.lengths.long().tolist()  # [N]
    group_rows = [{**rows[i // G], "completion_tokens": n} for i, n in enumerate(lengths)]
    scored = rewards(rollout.texts, group_rows)
    comps = scored.components
    components = (torch.tensor([comps[k] for k in comps], dtype=torch.float32).T  # [N, C]
                  if comps else None)
    signal = (torch.tensor(comps[signal_key], dtype=torch.float32)
              if signal_key is not None and signal_key in comps else None)
    return Sampled(list(rows), rollout, torch.tensor(scored.total, dtype=torch.float32), scored,
                   signal, components)
