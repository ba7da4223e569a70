"""The process group a step runs in: one process, or N under torchrun / accelerate.

Every stage of the GRPO step that needs the other ranks goes through a `World`: which whole
groups this rank owns, and the sums that must cover the global batch (the token-count
normaliser, metrics). With one process every method is the identity, so the single-process
path runs the very same code.

The launcher is torchrun or `accelerate launch` (both set `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`); `init_distributed` reads them and opens the process group (gloo
on CPU, nccl on GPU). `prepare_policy` then puts the policy under the data-parallel strategy the
config names (`train.strategy`):

- `none`: one process (refused when the world has more than one: N copies of one run);
- `ddp`: replicated weights (broadcast from rank 0 at the start), gradients summed over the
  ranks by one bucketed all-reduce per optimiser step (`sync_gradients`). This is torch DDP's
  arithmetic without its reducer: DDP's reducer all-reduces inside every backward and needs
  every rank to run the same number of backward passes, while in RL a rank's micro-batch count
  depends on its completions' lengths (and on how many have zero advantage);
- `fsdp2`: `torch.distributed.fsdp.fully_shard` on every decoder layer and the root, gradients
  reduce-scattered as sums (divide factor 1), optional bf16 compute over fp32 shards
  (`MixedPrecisionPolicy`) and CPU offload of parameters and optimiser state;
- `deepspeed`: DeepSpeed ZeRO stage 2 or 3 (`r1lab.train.deepspeed_engine`), r1lab's own
  loss, normaliser, AdamW, clipping and schedule;
- `auto`: `none` for one process; under `accelerate launch` the engine its config names
  (FSDP -> `fsdp2`, DeepSpeed -> `deepspeed`); else `ddp`.

Gradients are *sums*, not means: each rank's loss is its own tokens' share of the global
normaliser (`World.sum` of the token count), so the sum over ranks is exactly the one-process
loss and gradient.
"""

from __future__ import annotations

import datetime
import os
import resource
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("auto", "none", "ddp", "fsdp2", "deepspeed")
#: gradient all-reduce bucket (elements), as torch DDP's default 25 MiB of fp32
BUCKET_ELEMENTS = 25 * (1 << 20) // 4


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """The initialised `torch.distributed` group, or a world of one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, samples and checkpoints."""
        return self.rank == 0

    @property
    def local_rank(self) -> int:
        """This process's index on its node (the GPU it drives), from the launcher's env."""
        return int(os.environ.get("LOCAL_RANK", self.rank if self.size > 1 else 0))

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
            dist.all_reduce(t)
        return t

    def max(self, value: torch.Tensor | float) -> torch.Tensor:
        """The largest `value` of any rank (e.g. the micro-batch count every rank must run
        under FSDP2, whose forward is a collective)."""
        t = torch.as_tensor(value, dtype=torch.float64).clone()
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank.

        >>> World().gather({"a": 1})
        [{'a': 1}]
        """
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank (e.g. a resume decision taken by rank 0)."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


# ---------------------------------------------------------------- process group
def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of many."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str = "auto", timeout_s: float = 600.0) -> World:
    """Open the process group the launcher describes (env `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
    `MASTER_ADDR`, `MASTER_PORT`), or return a world of one when there is no launcher.

    `backend` auto: nccl when CUDA is available, else gloo. On GPU, rank r drives
    `cuda:LOCAL_RANK`. `timeout_s` bounds how long a collective waits for a rank that died
    before the survivors raise (torchrun stops the others as soon as one exits anyway).
    """
    if dist.is_initialized():
        return World.current()
    if not launched():
        return World()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not "
                           "set: start multi-process runs with torchrun or accelerate launch")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World.current()


def shutdown() -> None:
    """Close the process group (call once at the end of a launched command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_strategy(name: str, world: World) -> str:
    """The strategy a config's `train.strategy` means in this world.

    >>> resolve_strategy("auto", World(0, 1)), resolve_strategy("auto", World(1, 4))
    ('none', 'ddp')
    """
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy: unknown {name!r} (valid: {', '.join(STRATEGIES)})")
    if name == "auto":
        if world.size == 1:
            return "none"
        if _env_true("ACCELERATE_USE_FSDP"):  # accelerate launch with an FSDP config
            return "fsdp2"
        name = "deepspeed" if _env_true("ACCELERATE_USE_DEEPSPEED") else "ddp"
    if name == "none" and world.size > 1:
        raise ValueError(f"train.strategy: none, but {world.size} processes were launched: "
                         "each would train its own copy; use ddp or fsdp2 (or auto)")
    return name


def offload_requested(configured: bool) -> bool:
    """`train.offload`, or accelerate's `fsdp_offload_params: true` (env FSDP_OFFLOAD_PARAMS)."""
    return configured or _env_true("FSDP_OFFLOAD_PARAMS")


def _env_true(key: str) -> bool:
    return os.environ.get(key, "").strip().lower() in ("1", "true", "yes")


# ---------------------------------------------------------------- the policy under a strategy
class ParallelPolicy:
    """The policy as a strategy holds it. `model` is what the trainer calls (forward/backward)
    and the optimiser steps; `sync_gradients` before clipping; `full_state_dict` to save."""

    def __init__(self, model: torch.nn.Module, strategy: str, world: World) -> None:
        self.model, self.strategy, self.world = model, strategy, world

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp2"

    def sync_gradients(self) -> None:
        """Sum the gradients over the ranks (ddp); FSDP2 already reduce-scattered them."""
        if self.strategy != "ddp" or self.world.size == 1:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        for bucket in _buckets(grads, BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])  # [sum of numels]
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Global gradient norm (over every shard), clipped to `max_norm`; a plain tensor."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight, unsharded, on CPU: on every rank for ddp/none, on rank 0 only for
        fsdp2 (the other ranks get {}); a collective under fsdp2, so every rank calls it."""
        if self.strategy == "deepspeed":  # ZeRO-3: gathered; rank 0 keeps a copy
            from r1lab.train.deepspeed_engine import full_weights

            with full_weights(self.model):
                state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            return state if self.world.is_main else {}
        if not self.sharded:
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load unsharded weights (every rank passes the same dict)."""
        if not self.sharded:
            self.model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser state, unsharded (rank 0 holds it under fsdp2), so a checkpoint does
        not depend on the number of ranks that wrote it."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(self.model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer,
                                  state: dict[str, Any]) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(self.model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))

    def save_pretrained(self, path: str, tokenizer=None) -> None:
        """Write a plain Hugging Face directory (loads in transformers as it is) from rank 0;
        every rank must call it (the fsdp2 gather is a collective)."""
        state = self.full_state_dict()
        if self.world.is_main:
            unwrap(self.model).save_pretrained(path, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(path)
        self.world.barrier()


def prepare_policy(model: torch.nn.Module, strategy: str, world: World | None = None, *,
                   compute_dtype: torch.dtype | None = None,
                   offload: bool = False, zero_stage: int | None = None,
                   deepspeed_config: str | None = None, replica: bool = False) -> ParallelPolicy:
    """Put `model` under `strategy` (see the module docstring). `compute_dtype` (fsdp2 only):
    forward/backward in that dtype over fp32 shards, gradients reduced in fp32. `offload`
    (fsdp2 only): parameters, gradients and optimiser state live on CPU between uses.
    `zero_stage`, `deepspeed_config` (deepspeed only): the ZeRO stage and a DeepSpeed JSON whose
    `zero_optimization` options are used; the engine is made when `PolicyUpdate` builds the
    optimiser (`r1lab.train.deepspeed_engine`). `replica` (fsdp2 only): keep an unsharded
    frozen copy for sampling and evaluation (`r1lab.train.fsdp_engine`, what `train grpo` runs)."""
    world = world or World.current()
    strategy = resolve_strategy(strategy, world)
    if (compute_dtype is not None or offload) and strategy != "fsdp2":
        raise ValueError("FSDP2 mixed precision / offload need train.strategy: fsdp2 (deepspeed: "
                         "offload_* in the DeepSpeed config's zero_optimization)")
    if strategy == "deepspeed":
        from r1lab.train import deepspeed_engine

        deepspeed_engine.prepare(model, world, zero_stage, deepspeed_config)
        _broadcast(model)  # every rank starts from rank 0's weights
        return ParallelPolicy(model, "deepspeed", world)
    if strategy == "ddp":
        _broadcast(model)  # every rank starts from rank 0's weights
    elif strategy == "fsdp2":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        from r1lab.train import fsdp_engine

        if world.size > 1:
            _broadcast(model)  # every rank shards rank 0's weights
        copy = fsdp_engine.make_replica(model) if replica else None
        kw: dict[str, Any] = {}
        if compute_dtype is not None:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype,
                                                   reduce_dtype=torch.float32)
        if offload:
            kw["offload_policy"] = CPUOffloadPolicy()
        units = [*_decoder_layers(model), model]
        for unit in units:
            fully_shard(unit, **kw)
        for unit in units:  # sums (the loss carries the global normaliser), as plain SUM
            unit.set_gradient_divide_factor(1.0)  # collectives (gloo has no PREMUL_SUM)
            unit.set_force_sum_reduction_for_comms(True)
        if copy is not None:
            fsdp_engine.attach(model, copy, world)
    return ParallelPolicy(model, strategy, world)


def _broadcast(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, under any wrapper (`.module` of DDP-style wrappers)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP2 shards one by one (`model.model.layers` in HF decoders)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        layers = getattr(getattr(inner, "model", None), "layers", None)  # a peft-wrapped model
    return list(layers) if layers is not None else []


def _buckets(tensors: list[torch.Tensor], size: int) -> list[list[torch.Tensor]]:
    """Consecutive tensors of one dtype/device, cut at `size` elements.

    >>> [[t.numel() for t in b] for b in _buckets([torch.zeros(3), torch.zeros(4), torch.zeros(2)], 6)]
    [[3], [4, 2]]
    """
    out: list[list[torch.Tensor]] = []
    count = 0
    for t in tensors:
        if out and count + t.numel() <= size and t.dtype == out[-1][0].dtype \
                and t.device == out[-1][0].device:
            out[-1].append(t)
            count += t.numel()
        else:
            out.append([t])
            count = t.numel()
    return out


# ---------------------------------------------------------------- memory
def peak_memory() -> dict[str, float]:
    """Peak memory of this process so far, in MiB: `memory/peak_rss_mb` (the OS's high-water
    mark of resident memory) and, on GPU, `memory/peak_cuda_mb` (torch's allocator high-water
    mark on the current device) with `memory/reserved_cuda_mb`."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss_kb / (1 << 20) if sys.platform == "darwin" else rss_kb / 1024  # bytes on macOS
    out = {"memory/peak_rss_mb": round(rss_mb, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["memory/peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
        out["memory/reserved_cuda_mb"] = round(torch.cuda.max_memory_reserved() / (1 << 20), 1)
    return out
