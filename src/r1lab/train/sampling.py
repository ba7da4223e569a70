"""Stage 1 of the GRPO step: this step's prompts, G completions each from the current policy,
scored (stage 2, `r1lab.train.scoring`) as they arrive.

* `PromptOrder` is the data position: a seeded permutation of the rows, reshuffled each epoch.
  Every rank draws the same global batch of `train.batch_size` prompts and keeps its own whole
  groups (`World.shard`).
* A completion's randomness depends only on (train seed, step, round, the prompt's position in
  the global batch, its sample index), through per-prompt seeds (`prompt_seeds`), so one process
  and N processes draw the same completions.
* `PlainSampling` is GRPO's one round. `DynamicSampling` is DAPO's wrapper around it (Yu et al.
  2025): a group whose G rewards are all equal has zero group-relative advantage, so it adds
  nothing to the gradient but still dilutes the token normaliser; such groups are dropped and
  fresh prompts sampled until B groups with signal are kept, with at most `max_refill_rounds`
  extra rounds per step (DAPO's `max_num_gen_batches`); if the budget runs out the step trains
  on the groups it has (the first round if none).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from r1lab.algorithms import zero_signal_groups
from r1lab.rollout import SamplingParams
from r1lab.train.batch import Sampled, concat_sampled, select_groups
from r1lab.train.distributed import World
from r1lab.train.scoring import Rewards, score

_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit value from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def prompt_seeds(seed: int, step: int, round_: int, positions: Sequence[int]) -> tuple[int, ...]:
    """One sampling seed per prompt, from (seed, step, round, the prompt's global position) only.

    >>> a = prompt_seeds(1, 0, 0, range(4))
    >>> a[2:] == prompt_seeds(1, 0, 0, [2, 3]), len(set(a)), a == prompt_seeds(1, 1, 0, range(4))
    (True, 4, False)
    """
    base = _mix(_mix(_mix(seed) ^ step) ^ round_)
    return tuple(_mix(base ^ p) >> 1 for p in positions)  # 63 bits: fits a torch seed


class PromptOrder:
    """Which rows the next steps train on: a seeded permutation, reshuffled each epoch."""

    def __init__(self, num_rows: int, seed: int) -> None:
        self.num_rows, self.rng, self.order = num_rows, random.Random(seed), []

    def take(self, count: int) -> list[int]:
        """The next `count` row indices (the same on every rank: same seed, same calls)."""
        while len(self.order) < count:
            fresh = list(range(self.num_rows))
            self.rng.shuffle(fresh)
            self.order += fresh
        picked, self.order = self.order[:count], self.order[count:]
        return picked

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from r1lab.train.checkpoint import _tuples

        self.rng.setstate(_tuples(state["rng"]))
        self.order = [int(i) for i in state["order"]]


class GroupSampler:
    """One round: B prompts (this rank's whole groups of them), G completions each, scored."""

    def __init__(self, engine, rows: Sequence[dict[str, Any]], encode: Callable, rewards: Rewards,
                 params: SamplingParams, *, batch_size: int, seed: int, signal_key: str | None,
                 world: World | None = None) -> None:
        self.engine, self.rows, self.encode, self.rewards = engine, list(rows), encode, rewards
        self.params, self.batch_size, self.seed, self.signal_key = params, batch_size, seed, signal_key
        self.world = world or World()
        self.order = PromptOrder(len(self.rows), seed)
        self.seconds = {"generate": 0.0, "reward": 0.0}

    def __call__(self, step: int, round_: int = 0) -> Sampled:
        picked = self.order.take(self.batch_size)  # the global batch, as every rank sees it
        mine = self.world.shard(len(picked))  # this rank's whole groups
        rows = [self.rows[picked[i]] for i in mine]
        params = replace(self.params, seeds=prompt_seeds(self.seed, step, round_, mine))
        t0 = time.perf_counter()
        rollout = self.engine.generate(self.encode(rows), params)
        t1 = time.perf_counter()
        sampled = score(self.rewards, rows, rollout, signal_key=self.signal_key)
        self.seconds["generate"] += t1 - t0
        self.seconds["reward"] += time.perf_counter() - t1
        return sampled


@dataclass
class Drawn:
    """The sampling stage's output: the batch to train on, and the first round as sampled."""

    batch: Sampled
    first: Sampled  # unfiltered and on-policy: reward curves stay comparable across variants
    refills: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    dynamic: bool = False


class PlainSampling:
    """GRPO: one round of sampling per step."""

    def __init__(self, sampler: GroupSampler) -> None:
        self.sampler = sampler

    def __call__(self, step: int) -> Drawn:
        self.sampler.seconds = {"generate": 0.0, "reward": 0.0}
        batch = self.sampler(step)
        return Drawn(batch, batch, 0, dict(self.sampler.seconds))


class DynamicSampling(PlainSampling):
    """DAPO's dynamic sampling around `sampler`: rounds until B groups with signal are kept.

    Which groups are kept is decided over the global batch (each rank's signal flags are summed
    over the world), so N processes keep the groups one process would."""

    def __init__(self, sampler: GroupSampler, *, max_refill_rounds: int, pad_id: int) -> None:
        super().__init__(sampler)
        self.max_refill_rounds, self.pad_id = max_refill_rounds, pad_id

    def __call__(self, step: int) -> Drawn:
        s = self.sampler
        s.seconds = {"generate": 0.0, "reward": 0.0}
        first, batch, refills = fill_batch(lambda r: s(step, r), batch_groups=s.batch_size,
                                           max_refill_rounds=self.max_refill_rounds,
                                           pad_id=self.pad_id, world=s.world)
        return Drawn(batch, first, refills, dict(s.seconds), dynamic=True)


def fill_batch(
    sample: Callable[[int], Sampled], *, batch_groups: int, max_refill_rounds: int, pad_id: int,
    world: World | None = None,
) -> tuple[Sampled, Sampled, int]:
    """DAPO dynamic sampling -> (first round as sampled, batch to train on, extra rounds used).

    `sample(round)` draws B = `batch_groups` fresh prompts (this rank's shard of them, `World`)
    and their G completions. Groups with signal (values of `Sampled.signal`, DAPO's accuracy, or
    else the total rewards, not all equal) are kept round after round, in global batch order,
    until `batch_groups` are kept (the surplus of the last round is dropped) or
    `max_refill_rounds` extra rounds are spent.
    """
    world = world or World()
    offset = world.shard(batch_groups).start  # my groups' first position in the global batch
    first = sample(0)
    kept: list[Sampled] = []
    count, rounds, current = 0, 0, first
    while True:
        values = current.rewards if current.signal is None else current.signal
        local = ~zero_signal_groups(values, current.rollout.n)[:: current.rollout.n]  # [b]
        mine = range(offset, offset + len(local))
        flags = torch.zeros(max(batch_groups, mine.stop), dtype=torch.float64)
        flags[mine.start:mine.stop] = local.double()
        chosen = world.sum(flags).nonzero().flatten().tolist()[: batch_groups - count]  # global
        kept.append(select_groups(current, [g - offset for g in chosen if g in mine]))
        count += len(chosen)
        if count >= batch_groups or rounds >= max_refill_rounds:
            break
        rounds += 1
        current = sample(rounds)
    if count == 0:  # every group of every round was zero-signal: train on the first round, as
        return first, first, rounds  # plain GRPO would (its advantages are all 0)
    kept = [k for k in kept if k.num_groups] or kept[:1]  # a rank may keep none of its groups
    return first, concat_sampled(kept, pad_id), rounds
