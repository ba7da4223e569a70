"""The process group a step runs in: one process, or N under torchrun / accelerate.

Every stage of the GRPO step that needs the other ranks goes through a `World`: which whole
groups this rank owns, and the sums that must cover the global batch (the token-count
normaliser, metrics). With one process every method is the identity, so the single-process
path runs the very same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """The initialised `torch.distributed` group, or a world of one."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, samples and checkpoints."""
        return self.rank == 0

    def shard(self, num_groups: int) -> range:
        """The contiguous block of groups (of a global batch of `num_groups`) this rank owns.

        >>> [list(World(r, 3).shard(8)) for r in range(3)]
        [[0, 1, 2], [3, 4, 5], [6, 7]]
        """
        per = -(-num_groups // self.size)
        return range(min(num_groups, self.rank * per), min(num_groups, (self.rank + 1) * per))

    def sum(self, value: torch.Tensor | float) -> torch.Tensor:
        """`value` summed over every rank (a new tensor; the input is not changed)."""
        t = torch.as_tensor(value, dtype=torch.float64).clone()
        if self.size > 1:
            torch.distributed.all_reduce(t)
        return t
