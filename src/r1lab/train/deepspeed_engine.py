"""`train.strategy: deepspeed`: the policy under DeepSpeed ZeRO stage 2 or 3, r1lab's step kept.

DeepSpeed holds the weights (ZeRO-3: partitioned over the ranks), the gradients (partitioned,
reduced inside each backward) and the optimiser state (partitioned). What stays r1lab's:

- the loss and its **global** token-count normaliser (`PolicyUpdate`); DeepSpeed *averages*
  gradients over the ranks, so the loss handed to `engine.backward` is multiplied by the world
  size (exact for a power of two) and the gradient is the one-process gradient, a sum;
- the optimiser: r1lab's own `torch.optim.AdamW` (a client optimiser: ZeRO steps it on the
  partitions; AdamW is elementwise, so the update is the one-process update), its LambdaLR
  schedule (stepped by r1lab once per GRPO step, not by DeepSpeed) and `optim.grad_clip`
  (DeepSpeed's `gradient_clipping`, over the global norm);
- precision: fp32 inside DeepSpeed; `model.dtype: bfloat16` is r1lab's autocast over fp32
  master weights, as with the other strategies (DeepSpeed's fp16/bf16 sections are refused).

ZeRO-2 and ZeRO-3 reduce (and ZeRO-3 gathers) inside every forward/backward, so every rank must
run the same number of them: a rank with fewer micro-batches runs idle ones (`idle_loss`: a
real forward on one of its rows, loss x 0). Outside the update, where ranks forward different
amounts (sampling, the reference, the probe, evaluation, saving), ZeRO-3's weights are gathered
whole on every rank first (`full_weights`), so those forwards are local.

Checkpoints: the weights are a plain Hugging Face directory written by rank 0 (gathered under
ZeRO-3); the ZeRO optimiser partitions of every rank are gathered into rank 0's trainer state.
A checkpoint resumes with the same world size; another world size is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from r1lab.train.distributed import World

#: the attribute of the policy module that carries its `DeepSpeedPolicy`
ATTR = "r1lab_deepspeed"


def available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken install failing at import
        return False
    return True


def zero_stage(configured: int | None, ds_config: dict[str, Any]) -> int:
    """The ZeRO stage: `train.zero_stage`, else accelerate's `zero_stage`
    (env ACCELERATE_DEEPSPEED_ZERO_STAGE), else the DeepSpeed config file's, else 2."""
    stage = configured
    if stage is None and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        stage = int(os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    if stage is None:
        stage = ds_config.get("zero_optimization", {}).get("stage")
    stage = 2 if stage in (None, "auto") else int(stage)
    if stage not in (2, 3):
        raise ValueError(f"train.strategy: deepspeed supports ZeRO stage 2 or 3, not {stage}")
    return stage


def user_config(path: str | None) -> dict[str, Any]:
    """The DeepSpeed JSON named by `train.deepspeed_config`, else accelerate's
    `deepspeed_config_file` (env ACCELERATE_DEEPSPEED_CONFIG_FILE); {} if none."""
    path = path or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    if not path:
        return {}
    return json.loads(Path(path).read_text())


def build_config(stage: int, world: World, user: dict[str, Any] | None = None,
                 grad_clip: float = 1.0) -> dict[str, Any]:
    """The DeepSpeed config r1lab runs: the user's `zero_optimization` options (bucket sizes,
    offload, persistence threshold...) with r1lab's own batch, clipping and precision.

    >>> c = build_config(3, World(0, 2), {"zero_optimization": {"stage": 2, "overlap_comm": True}})
    >>> c["zero_optimization"]["stage"], c["gradient_clipping"], c["train_batch_size"]
    (3, 1.0, 2)
    """
    user = dict(user or {})
    for key in ("fp16", "bf16"):
        if _enabled(user.get(key)):
            raise ValueError(f"the DeepSpeed config enables {key}: r1lab keeps fp32 master weights "
                             "in DeepSpeed and computes in bf16 by model.dtype: bfloat16 "
                             "(mixed precision); remove the section")
    for key in ("optimizer", "scheduler"):
        if user.get(key):
            raise ValueError(f"the DeepSpeed config has a {key!r} section: r1lab runs its own "
                             "(optim.* in the r1lab config: AdamW, warmup, grad_clip); remove it")
    zero = {k: v for k, v in user.get("zero_optimization", {}).items() if v != "auto"}
    zero.update(stage=stage)
    for key, env in (("offload_optimizer", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
                     ("offload_param", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")):
        device = os.environ.get(env, "none").strip().lower()  # accelerate's offload_*_device
        if device not in ("", "none") and key not in zero:
            zero[key] = {"device": device}
    zero.setdefault("overlap_comm", False)
    zero.setdefault("contiguous_gradients", True)
    return {
        "train_micro_batch_size_per_gpu": 1,  # r1lab batches itself; these only fill DeepSpeed's
        "gradient_accumulation_steps": 1,     # bookkeeping; a rank runs any number of backward
        "managed_gradient_accumulation": False,  # passes, the step is the one boundary
        "train_batch_size": world.size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # r1lab's torch AdamW
        "zero_force_ds_cpu_optimizer": False,  # also with offload_optimizer (not DeepSpeedCPUAdam)
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and section.get("enabled") not in (False, "false", None, "auto")


class DeepSpeedPolicy:
    """The DeepSpeed side of one policy: the plan (`stage`, config) from `prepare_policy`, the
    engine once `PolicyUpdate` hands it the optimiser (`wrap`)."""

    def __init__(self, model: torch.nn.Module, stage: int, config: dict[str, Any],
                 world: World) -> None:
        self.model, self.stage, self.config, self.world = model, stage, config, world
        self.engine = None

    # ---------------------------------------------------------------- setup
    def __deepcopy__(self, memo):  # a copy of the module (the reference) is a plain module
        return None

    def wrap(self, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        """`deepspeed.initialize` on the policy and r1lab's optimiser (ZeRO-3 partitions the
        weights now). The module stays the one the trainer calls: ZeRO's hooks are on it."""
        import deepspeed

        if self.engine is not None:
            raise RuntimeError("the policy is already under a DeepSpeed engine")
        self.config["gradient_clipping"] = grad_clip
        _skip_cpu_shm_op()
        self.engine, *_ = deepspeed.initialize(model=self.model, optimizer=optimizer,
                                               config=self.config,
                                               dist_init_required=False)

    # ---------------------------------------------------------------- the step
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate `loss`'s gradient; DeepSpeed averages over ranks, r1lab's loss is a share
        of the global sum, hence the world-size factor."""
        self.engine.backward(loss * self.world.size, scale_wrt_gas=False)
        # what `engine.forward` does before the next pass (r1lab calls the module itself): ZeRO-3
        # then accumulates the next backward into the gradient partitions instead of copying
        self.engine.optimizer.clear_backward_seen_flag()

    def step(self) -> float:
        """Clip to `gradient_clipping` over the global norm and step the optimiser (DeepSpeed
        skips the step when the norm is not finite). The norm before clipping."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    # ---------------------------------------------------------------- weights
    def full_weights(self, modify: bool = False):
        """Every weight whole on every rank inside the block (ZeRO-3; a no-op under ZeRO-2,
        whose weights are replicated). A collective: every rank enters and leaves it. `modify`:
        rank 0's values are kept on exit (weights loaded into the module; no forward inside)."""
        if self.stage != 3 or self.engine is None:
            return contextlib.nullcontext()
        import deepspeed

        if modify:
            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=0)
        return _local_forwards(self.engine)

    # ---------------------------------------------------------------- optimiser state
    def optimizer_state(self) -> dict[str, Any] | None:
        """Every rank's ZeRO optimiser partition (fp32 master weights, AdamW moments), gathered
        on rank 0 (None on the others); a collective."""
        import torch.distributed as dist

        mine = self.engine.optimizer.state_dict()
        if self.world.size == 1:
            parts = [mine]
        else:
            parts = [None] * self.world.size if self.world.is_main else None
            dist.gather_object(mine, parts, dst=0)
        if not self.world.is_main:
            return None
        return {"stage": self.stage, "world_size": self.world.size, "partitions": parts}

    def load_optimizer_state(self, state: dict[str, Any], where: str = "the checkpoint") -> None:
        check_resumable(state, self.world, self.stage, where)
        self.engine.optimizer.load_state_dict(state["partitions"], load_optimizer_states=True,
                                              load_from_fp32_weights=True)


@contextlib.contextmanager
def _local_forwards(engine):
    """ZeRO-3's weights gathered whole, and its hooks off meanwhile, so that a forward inside
    is local: one rank may run alone (evaluation) and ranks may run different numbers of
    forwards (sampling). DeepSpeed's `unwrap_model_for_generation` gathers and removes the
    per-module hooks; the root module's pre-forward hook (`reset_step`) stays and, while ZeRO
    records its trace, checks the module order against the other ranks (a collective): it is
    a no-op inside the block."""
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    coordinator = engine.optimizer.parameter_offload.get_param_coordinator()
    with unwrap_model_for_generation(engine):
        coordinator.reset_step = lambda: None
        try:
            yield
        finally:
            del coordinator.reset_step


def _skip_cpu_shm_op() -> None:
    """On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op when its comm
    backend starts (minutes of g++ on a small machine, a compiler needed at run time). Only its
    inference all-reduce (tensor-parallel inference) uses it; ZeRO training goes through
    torch.distributed (gloo), so r1lab marks the op unavailable instead of building it."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def safe_globals():
    """The DeepSpeed classes inside a ZeRO optimiser state (its loss scaler, stage enum,
    fragment addresses), allowed for `torch.load(weights_only=True)` while the block runs; a
    no-op when DeepSpeed is not installed."""
    if not available():
        return contextlib.nullcontext()
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address])


def check_resumable(state: Any, world: World, stage: int | None, where: str) -> None:
    """Refuse a ZeRO optimiser state that this run cannot continue from, saying why."""
    if not (isinstance(state, dict) and "partitions" in state):
        if stage is not None:
            raise ValueError(f"{where} was not written under train.strategy: deepspeed (its "
                             "optimiser state is not ZeRO partitions): resume it with the "
                             "strategy that wrote it")
        return
    if stage is None:
        raise ValueError(f"{where} was written under train.strategy: deepspeed (ZeRO-"
                         f"{state['stage']}, {state['world_size']} processes): its optimiser "
                         "state is partitioned; resume it with the same strategy and number of "
                         "processes, or start a new run from its weights (model.path)")
    if state["world_size"] != world.size or state["stage"] != stage:
        raise ValueError(f"{where} holds ZeRO-{state['stage']} optimiser partitions of "
                         f"{state['world_size']} processes; this run is ZeRO-{stage} on "
                         f"{world.size}. Resume with {state['world_size']} processes and ZeRO-"
                         f"{state['stage']}, or start a new run from its weights (model.path): "
                         "a different world size is not supported under deepspeed")


def prepare(model: torch.nn.Module, world: World, stage: int | None = None,
            config_path: str | None = None) -> DeepSpeedPolicy:
    """Attach the DeepSpeed plan to `model` (the engine is made with the optimiser)."""
    if not available():
        raise ValueError("train.strategy: deepspeed needs the deepspeed package: "
                         "pip install 'r1lab[deepspeed]' (on CPU: DS_BUILD_OPS=0)")
    if world.size < 2:
        raise ValueError("train.strategy: deepspeed shards over processes: start it with torchrun "
                         "or accelerate launch and 2+ processes (one process: strategy none)")
    user = user_config(config_path)
    stage = zero_stage(stage, user)
    policy = DeepSpeedPolicy(model, stage, build_config(stage, world, user), world)
    setattr(model, ATTR, policy)
    return policy


def policy_of(model: Any) -> DeepSpeedPolicy | None:
    """The `DeepSpeedPolicy` the model is under, or None."""
    return getattr(model, ATTR, None)


def full_weights(model: Any, modify: bool = False):
    """`DeepSpeedPolicy.full_weights` of `model`'s policy; a no-op for any other model."""
    policy = policy_of(model)
    return policy.full_weights(modify) if policy is not None else contextlib.nullcontext()


def partitioned(weight: Any) -> bool:
    """Whether `weight` is a ZeRO-3 partition not gathered right now (its data is not the
    whole tensor): code that reads weights directly (the packed forward) cannot use it."""
    status = getattr(weight, "ds_status", None)
    return status is not None and getattr(status, "name", "") != "AVAILABLE"
