"""Weight sync to a rollout engine, and the probe that catches a sync that silently failed.

An engine that samples from its *own* copy of the weights (vLLM colocated or as a server, the
unsharded sampler replica of an FSDP2 rank) must get the trainer's weights after every
optimiser step. Peers have shipped bugs where that sync silently did nothing (wrong parameter
names, a stale prefix cache, a missed LoRA merge), and the run goes on, off-policy, looking
fine. So after every sync r1lab checks it, engine-agnostically:

`MismatchProbe`: the trainer's log-probs of a few completions the engine just sampled, at
the weights it sampled with, against the engine's own (the GRPO step takes them from the
update's first forward, which computes them anyway; a model with dropout, or a strategy with
collectives in the forward, gets a probe forward of its own; the engine's are
`RolloutBatch.logprobs`, which every engine returns): `rollout/mismatch_kl` (k3 estimate of KL(pi_rollout || pi_train), ~1e-7 in fp32 when
in sync, ~1e-3 between a bf16 engine and an fp32 trainer, far more for stale weights) and
`rollout/mismatch_max` (the largest |log-prob difference|). Past `warn_kl` it warns loudly
(a `RolloutMismatchWarning` and a red line on stderr) on every step it stays there.

`ReplicaEngine`: any engine over a separate copy of the policy, refreshed from the trainer's
(unsharded) state dict when `policy_updated()` was called: what the native sampler runs on
under FSDP2, and the stand-in for vLLM's weight sync in the CPU tests.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from r1lab.algorithms.mismatch import mismatch_kl
from r1lab.rollout.types import RolloutBatch, SamplingParams


class RolloutMismatchWarning(UserWarning):
    """The trainer's log-probs of sampled tokens disagree with the rollout engine's."""


class MismatchProbe:
    """`probe(model, rollout)` -> {"rollout/mismatch_kl", "rollout/mismatch_max"} over the
    first `completions` completions of the batch (all of their tokens); `probe.compare(train,
    engine, mask)` the same from log-probs already computed."""

    def __init__(self, completions: int = 4, warn_kl: float = 1e-3, temperature: float = 1.0,
                 pad_id: int = 0, logprobs_fn: Callable | None = None) -> None:
        self.completions, self.warn_kl, self.temperature = completions, warn_kl, temperature
        self.pad_id = pad_id
        self.logprobs_fn = logprobs_fn  # (model, input_ids, attn, pos, L, temperature) -> [n, T]
        self.warned = 0

    @torch.no_grad()
    def __call__(self, model, rollout: RolloutBatch) -> dict[str, float]:
        from r1lab.train.common import completion_logprobs, join_prompt_completion

        n = min(self.completions, len(rollout.completion_ids))
        if n == 0:
            return {}
        G = rollout.n
        prompts = rollout.prompt_ids[: -(-n // G)]  # the prompts of the first n completions
        rows = len(prompts) * G
        ids, attn, pos, L = join_prompt_completion(
            prompts, rollout.completion_ids[:rows], rollout.completion_mask[:rows], self.pad_id)
        fn = self.logprobs_fn or completion_logprobs
        was_training = model.training
        model.eval()
        train = fn(model, ids[:n], attn[:n], pos[:n], L, self.temperature)  # [n, T]
        model.train(was_training)
        return self.compare(train, rollout.logprobs[:n], rollout.completion_mask[:n])

    def compare(self, train: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """The metrics (and the warning) from the trainer's log-probs `train` [n, T] of sampled
        tokens against the engine's `engine` [n, T], over `mask` [n, T]: what `__call__` does
        after its forward, and what the step does with log-probs the update's first forward
        computed at the sampling weights (the same numbers, without a forward of its own)."""
        engine = engine.float()
        kl = float(mismatch_kl(train.float(), engine, mask))
        diff = float(((train.float() - engine).abs() * mask).max()) if mask.any() else 0.0
        if kl > self.warn_kl:
            self.warned += 1
            msg = (f"rollout/mismatch_kl = {kl:.3g} > {self.warn_kl:g}: the rollout engine's "
                   f"log-probs disagree with the trainer's (max |diff| {diff:.3g}); a weight "
                   "sync may have failed and training is off-policy")
            print(f"\033[1;31mWARNING: {msg}\033[0m", file=sys.stderr, flush=True)
            warnings.warn(msg, RolloutMismatchWarning, stacklevel=2)
        return {"rollout/mismatch_kl": kl, "rollout/mismatch_max": diff}


class ReplicaEngine:
    """Rollout engine `make(replica, tokenizer)` over its own copy of `policy`'s weights,
    loaded from `state_fn()` (default: the policy's state dict) before the next `generate`
    after `policy_updated()` (`eager`: in `policy_updated` itself). `sync_weights=False`
    leaves the copy stale: a broken sync, for the probe's tests."""

    def __init__(self, policy, tokenizer, make: Callable[[Any, Any], Any] | None = None,
                 state_fn: Callable[[], dict[str, torch.Tensor]] | None = None,
                 replica=None, sync_weights: bool = True, eager: bool = False) -> None:
        from r1lab.rollout.hf import HFSampler

        self.policy = policy
        self.replica = replica if replica is not None else copy.deepcopy(policy)
        self.replica.requires_grad_(False).eval()
        self.engine = (make or HFSampler)(self.replica, tokenizer)
        self.pad_id = self.engine.pad_id
        self.state_fn = state_fn or policy.state_dict
        self.sync_weights = sync_weights
        self.eager = eager  # sync in `policy_updated` (every rank at the same point: fsdp2)
        self.syncs = 0
        self._stale = False

    def policy_updated(self) -> None:
        self._stale = True
        if self.eager:
            self.sync()

    def sync(self) -> None:
        """Load the trainer's current weights into the replica (every rank calls `state_fn`:
        under FSDP2 it is a collective)."""
        state = self.state_fn()
        if self.sync_weights:
            with torch.no_grad():
                self.replica.load_state_dict(state)
            getattr(self.engine, "policy_updated", lambda: None)()  # e.g. vLLM reloads
        self.syncs += 1
        self._stale = False

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        if self._stale:
            self.sync()
        return self.engine.generate(prompt_ids, params)
