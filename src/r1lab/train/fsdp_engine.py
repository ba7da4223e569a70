"""`train.strategy: fsdp2` in `train grpo`: the policy sharded by `fully_shard`, plus one plain
replica per rank for everything that is not the update.

FSDP2 all-gathers a layer's weights inside its forward and reduce-scatters its gradients inside
its backward: collectives, so every rank must run the same forwards, in the same order. The
update does (a rank with fewer micro-batches runs idle passes: a real forward, loss x 0, as
under DeepSpeed). The rest of a GRPO step cannot: ranks sample different amounts (DAPO's
refills, early stops), and rank 0 alone evaluates and writes. So, as with a colocated vLLM
engine, each rank keeps a **replica**: an unsharded, frozen copy of the policy, made before
sharding and refreshed from the shards after every optimiser step (one all-gather per weight,
every rank at the same point of the step). The sampler, the entropy metric and evaluation run
on it; the mismatch probe compares the engine's log-probs (the replica's) with the sharded
policy's own forward, so a refresh that silently failed is caught the next step.

Memory: the shards, plus one whole copy of the weights per rank (the sampler's), plus the
frozen reference when beta > 0 (made from the replica before the first step). Optimiser state
and gradients stay sharded.

Checkpoints: the weights are gathered to rank 0 and written as a plain Hugging Face directory;
the optimiser state is gathered whole, keyed by parameter name (`get_optimizer_state_dict`), so
a checkpoint resumes under another number of processes too, or in one process.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from r1lab.train.distributed import World

#: the attribute of the policy module that carries its `FSDPPolicy`
ATTR = "r1lab_fsdp"
#: the optimiser-state format of an fsdp2 checkpoint: whole tensors keyed by parameter name
FORMAT = "fsdp2-full"


class FSDPPolicy:
    """The FSDP2 side of one policy: its world and its unsharded `replica` (frozen, eval)."""

    def __init__(self, model: torch.nn.Module, replica: torch.nn.Module, world: World) -> None:
        self.model, self.replica, self.world = model, replica, world

    def __deepcopy__(self, memo):  # a copy of the module (e.g. a reference) is a plain module
        return None

    # ---------------------------------------------------------------- weights
    def full_state(self) -> dict[str, torch.Tensor]:
        """Every weight whole, on every rank (a collective: every rank calls it, in step)."""
        out = {}
        for key, value in self.model.state_dict().items():
            value = value.full_tensor() if hasattr(value, "full_tensor") else value
            out[key] = value.detach()
        return out

    def rank0_state(self) -> dict[str, torch.Tensor]:
        """Every weight whole, on CPU, on rank 0 ({} elsewhere); a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        return {k: v for k, v in state.items() if k not in self._tied_copies()}

    def _tied_copies(self) -> set[str]:
        """The names under which a tied weight appears a second time (e.g. `lm_head.weight`
        tied to the embedding), as `save_pretrained` leaves them out."""
        seen, out = set(), set()
        for key, value in self.replica.state_dict().items():
            if value.data_ptr() in seen:
                out.add(key)
            seen.add(value.data_ptr())
        return out

    def load_checkpoint(self, path) -> None:
        """A checkpoint's weights into the replica (every rank reads the files), then from it
        into the shards (tied weights come back under both names)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from r1lab.train.checkpoint import load_weights

        load_weights(self.replica, path)
        set_model_state_dict(self.model, self.replica.state_dict(),
                             options=StateDictOptions(full_state_dict=True))

    # ---------------------------------------------------------------- optimiser state
    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The optimiser state whole, keyed by parameter name, on rank 0 (None elsewhere); a
        collective."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        state = get_optimizer_state_dict(self.model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        return {"format": FORMAT, "state": state} if self.world.is_main else None

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        load_named_optimizer_state(self.model, optimizer, saved)


def is_named_state(saved: Any) -> bool:
    """Whether an optimiser state is an fsdp2 checkpoint's (whole tensors, parameter names)."""
    return isinstance(saved, dict) and saved.get("format") == FORMAT


def load_named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                               saved: Any) -> None:
    """Load an fsdp2 checkpoint's optimiser state into `optimizer` over `model`, sharded or
    not (every rank passes the whole state): any number of processes resumes it."""
    if not is_named_state(saved):
        raise ValueError("the checkpoint's optimiser state was written by one process or ddp "
                         "(indexed by position, not by parameter name): resume it with "
                         "train.strategy none or ddp, or start a new run from its weights "
                         "(model.path)")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, saved["state"],
                             options=StateDictOptions(full_state_dict=True))


def make_replica(model: torch.nn.Module) -> torch.nn.Module:
    """The replica of `model` (call before `fully_shard`): an unsharded frozen copy."""
    replica = copy.deepcopy(model)
    replica.requires_grad_(False).eval()
    return replica


def attach(model: torch.nn.Module, replica: torch.nn.Module, world: World) -> FSDPPolicy:
    policy = FSDPPolicy(model, replica, world)
    setattr(model, ATTR, policy)
    return policy


def policy_of(model: Any) -> FSDPPolicy | None:
    """The `FSDPPolicy` the model is under, or None."""
    return getattr(model, ATTR, None)


def sharded(weight: Any) -> bool:
    """Whether `weight` is an FSDP2 shard (a DTensor): code that reads weights directly (the
    packed forward, the native decoder) cannot use it."""
    from torch.distributed.tensor import DTensor

    return isinstance(weight, DTensor)
