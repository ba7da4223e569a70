"""Stage 4 of the GRPO step: the clipped policy loss (+ KL to the reference) and the optimiser.

`num_iterations` passes over the rollouts; one optimiser step per mini-batch
(`algorithm.mini_batch_size` completions of the global batch, default all), accumulated over
micro-batches. With one optimiser step the policy has not moved since sampling, so the old
logprobs are the current ones detached (ratio exactly 1, no extra forward); with more, the
sampler's logprobs are the old policy's (taken once per batch, at sampling).

Across processes each rank computes the loss of its own completions, normalised by the global
batch's counts (`World.sum` of the token counts, over every rank and micro-batch), so the
gradients summed over ranks are the one-process gradient exactly.

Speed, all exact: micro-batches group completions of similar length (`Forward`); with no KL term
in the loss, completions whose advantage is exactly 0 everywhere are left out of the
forward/backward (their loss and gradient are 0), while the normalisers still count their tokens,
so the loss and the update are unchanged (the clip/KL *metrics* then average over the
completions that were computed).
"""

from __future__ import annotations

import math
from functools import cached_property, partial
from typing import Any

import torch

from r1lab.algorithms import Algorithm
from r1lab.config import RunConfig
from r1lab.train.batch import Advantages, TokenBatch
from r1lab.train.distributed import World
from r1lab.train.forward import Forward


def zero_advantage_is_inert(alg: Algorithm) -> bool:
    """Whether the policy loss gives a token whose advantage is 0 exactly zero loss and zero
    gradient (true of every `ratio x advantage` loss); probed once on a small tensor, so no
    loss name is special-cased.

    >>> from r1lab.algorithms import resolve_algorithm
    >>> from r1lab.config import AlgorithmConfig
    >>> zero_advantage_is_inert(resolve_algorithm(AlgorithmConfig()))
    True
    """
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    per_token, _ = alg.loss(logp=logp, old_logp=torch.tensor([[-1.5, -1.0, -0.5]]),
                            advantages=torch.zeros(1, 3), mask=torch.ones(1, 3))
    per_token.sum().backward()
    return bool((per_token == 0).all()) and bool((logp.grad == 0).all())


class PolicyUpdate:
    """`update(tokens, advantages, sampler_logp) -> metrics`: the optimiser step(s) of a step."""

    def __init__(self, cfg: RunConfig, model, alg: Algorithm, forward: Forward,
                 world: World | None = None) -> None:
        self.cfg, self.model, self.alg, self.forward = cfg, model, alg, forward
        self.world = world or World()
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                           betas=(o.beta1, o.beta2))
        warmup = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.kl_in_loss = alg.kl is not None and not cfg.algorithm.kl_in_reward
        from r1lab.algorithms.mismatch import ROLLOUT_CORRECTIONS

        r = cfg.rollout  # TIS / MIS weights for the rollout-trainer mismatch; none: no weights
        self.correction = (None if r.correction == "none" else
                           partial(ROLLOUT_CORRECTIONS.get(r.correction), cap=r.correction_cap))
        self.skip_inert = not self.kl_in_loss and zero_advantage_is_inert(alg)
        from r1lab.train import fsdp_engine
        from r1lab.train.deepspeed_engine import policy_of

        self.ds = policy_of(model)  # train.strategy deepspeed: ZeRO steps r1lab's AdamW
        if self.ds is not None:
            self.ds.wrap(self.optimizer, o.grad_clip)
        self.fsdp = fsdp_engine.policy_of(model)  # train.strategy fsdp2 (in train grpo)
        # ZeRO and FSDP2 run collectives inside every forward/backward: as many on every rank
        self.lockstep = self.ds is not None or self.fsdp is not None

    def __call__(self, tokens: TokenBatch, adv: Advantages, sampler_logp: torch.Tensor,
                 probe_rows: int = 0) -> dict[str, float]:
        """The optimiser step(s). `probe_rows`: keep the detached log-probs of that many
        completions from the first step's forwards (`self.probed`: the weights the engine
        sampled with), for the weight-sync probe."""
        cfg, alg = self.cfg.algorithm, self.alg
        mask, advantages, ref_logp = tokens.train_mask, adv.advantages, adv.ref_logp  # [N, T]
        lo, total = self._place(len(tokens))  # my completions are global rows lo .. lo+N-1
        mini = cfg.mini_batch_size or total
        starts = [j for _ in range(cfg.num_iterations) for j in range(0, total, mini)]  # one step each
        summed: dict[str, float] = {}  # summed over ranks at the end
        grad_norms, skipped, total_loss = [], 0, 0.0
        self.probed: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows [n], logp [n, T])
        self.model.train()
        for step_i, j in enumerate(starts):
            a, b, rows = self._rows(j, mini, lo, total, tokens, advantages)  # local a .. b-1
            num_tokens = self.world.sum(mask[a:b].sum()).clamp(min=1).to(mask.dtype)  # global
            num_seqs = float(min(j + mini, total) - j)
            if self.skip_inert:
                summed["skipped_rows"] = summed.get("skipped_rows", 0.0) + (b - a - len(rows))
            if self.ds is None:  # (DeepSpeed clears its gradients in its step)
                self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            batches = self.forward.micro_batches(self.model, tokens, rows)
            if self.lockstep:  # collectives in every pass: as many passes on every rank
                batches += [None] * (int(self.world.max(max(1, len(batches)))) - len(batches))
            for idx in batches:
                if idx is None:  # an idle pass: a real forward, zero loss
                    idle = self._idle_loss(tokens)
                    idle.backward() if self.ds is None else self.ds.backward(idle)
                    continue
                m = mask[idx]  # [n, T]
                logp = self.forward.logprobs(self.model, tokens, idx)  # [n, T]
                kept = sum(len(r) for r, _ in self.probed)
                if step_i == 0 and kept < probe_rows:
                    self.probed.append((idx[:probe_rows - kept], logp[:probe_rows - kept].detach()))
                old = logp.detach() if len(starts) == 1 else sampler_logp[idx]
                per_token, lm = alg.loss(logp=logp, old_logp=old, advantages=advantages[idx], mask=m)
                if self.correction is not None:  # pi_train_old / pi_rollout, truncated or masked
                    per_token = per_token * self.correction(old.detach(), sampler_logp[idx], m)
                if self.kl_in_loss:
                    kl = alg.kl(logp=logp, ref_logp=ref_logp[idx], old_logp=old, mask=m)  # [n, T]
                    per_token = per_token + cfg.beta * kl
                    lm["kl"] = ((kl * m).sum() / m.sum().clamp(min=1)).detach()
                loss = alg.aggregation(per_token=per_token, mask=m, num_tokens=num_tokens,
                                       num_seqs=num_seqs, norm_len=self.cfg.rollout.max_new_tokens)
                if self.ds is None:
                    loss.backward()
                else:
                    self.ds.backward(loss)
                share = m.sum().item() / max(1.0, num_tokens.item())
                step_loss += loss.item()
                for k, v in lm.items():
                    summed[k] = summed.get(k, 0.0) + float(v) * share / len(starts)
            if self.ds is None:
                self._reduce_gradients(computed=len(rows) > 0)  # every rank: the global gradient
            step_loss = float(self.world.sum(step_loss))  # the global batch's loss
            total_loss += step_loss / len(starts)
            if self.ds is not None:  # clip over the global norm, step; skipped when not finite
                grad_norms.append(self.ds.step())
                skipped += not math.isfinite(grad_norms[-1])
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # fsdp2: the global norm, as a DTensor
                grad_norm = grad_norm.full_tensor()
            grad_norms.append(grad_norm.item())
            if not (math.isfinite(step_loss) and bool(torch.isfinite(grad_norm))):
                self.optimizer.zero_grad(set_to_none=True)  # numerics guard: no step, counted
                skipped += 1
                continue
            self.optimizer.step()
        self.scheduler.step()
        self.model.eval()
        # a rank whose completions were all inert has no loss metrics: reduce the union of keys
        keys = sorted(set().union(*self.world.gather(sorted(summed)))) if self.world.size > 1 \
            else list(summed)
        totals = self.world.sum(torch.tensor([summed.get(k, 0.0) for k in keys], dtype=torch.float64))
        out = {k: float(v) for k, v in zip(keys, totals)}
        out["loss"] = total_loss
        out["grad_norm"] = sum(grad_norms) / len(starts)
        if skipped:
            out["skipped_updates"] = skipped
        return out

    def _rows(self, j: int, mini: int, lo: int, total: int, tokens: TokenBatch,
              advantages: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        """The mini-batch of global rows j .. j+mini-1 on this rank: its local range a .. b-1,
        and the rows of it that are computed (the inert ones left out)."""
        mask = tokens.train_mask
        a = max(j, lo) - lo
        b = max(min(j + mini, total, lo + len(tokens)) - lo, a)
        rows = torch.arange(a, b, device=mask.device)
        if self.skip_inert:
            rows = rows[(advantages[a:b] * mask[a:b]).ne(0).any(-1)]
        return a, b, rows

    def can_probe(self, tokens: TokenBatch, adv: Advantages) -> bool:
        """Whether the first optimiser step's forwards can serve the weight-sync probe: they
        compute at least one completion on this rank, a training-mode forward is deterministic
        (no dropout), and no strategy runs collectives in the forward (a separate probe forward
        would then have to run on every rank alike)."""
        if self.lockstep or self.dropout:
            return False
        lo, total = self._place(len(tokens))
        mini = self.cfg.algorithm.mini_batch_size or total
        return len(self._rows(0, mini, lo, total, tokens, adv.advantages)[2]) > 0

    @cached_property
    def dropout(self) -> bool:
        """Whether the model's training-mode forward is random (a dropout module or a config
        dropout rate above 0), so that it differs from an eval-mode forward."""
        if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.model.modules()):
            return True
        config = getattr(self.model, "config", None)
        rates = config.to_dict() if hasattr(config, "to_dict") else {}
        return any(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                   for k, v in rates.items() if "dropout" in k or "pdrop" in k)

    def _idle_loss(self, tokens: TokenBatch) -> torch.Tensor:
        """Zero, through a real forward of this rank's first completion (the same modules, in
        the same order, as a real micro-batch: ZeRO's per-pass collectives line up)."""
        if len(tokens) == 0:
            raise ValueError(f"train.strategy: {self.cfg.train.strategy} needs completions on "
                             "every rank: this "
                             f"rank owns no group of the batch (train.batch_size="
                             f"{self.cfg.train.batch_size} over {self.world.size} processes); "
                             "use a batch_size that is a multiple of the number of processes")
        return self.forward.logprobs(self.model, tokens, torch.arange(1)).sum() * 0.0

    def _place(self, n_local: int) -> tuple[int, int]:
        """(index of my first completion in the global batch, global batch size)."""
        if self.world.size == 1:
            return 0, n_local
        counts = torch.zeros(self.world.size, dtype=torch.float64)
        counts[self.world.rank] = n_local
        counts = self.world.sum(counts).long().tolist()
        return sum(counts[: self.world.rank]), sum(counts)

    def _reduce_gradients(self, computed: bool) -> None:
        """Sum the gradients over ranks (each rank's loss is already a share of the global one).
        When no completion was computed (all inert) the optimiser still steps, on zeros; a rank
        without completions contributes zeros."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not computed or self.world.size > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        if self.world.size > 1 and self.fsdp is None:  # fsdp2 reduce-scattered them already
            for p in params:
                torch.distributed.all_reduce(p.grad)

    def state_dict(self) -> dict[str, Any]:
        """Under deepspeed / fsdp2 a collective, whose result rank 0 holds (ZeRO's partitions;
        fsdp2's whole state by parameter name)."""
        if self.ds is not None:
            opt = self.ds.optimizer_state()
        elif self.fsdp is not None:
            opt = self.fsdp.optimizer_state(self.optimizer)
        else:
            opt = self.optimizer.state_dict()
        return {"optimizer": opt, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from r1lab.train.deepspeed_engine import check_resumable
        from r1lab.train.fsdp_engine import is_named_state, load_named_optimizer_state

        saved = state["optimizer"]
        if self.ds is not None:
            self.ds.load_optimizer_state(saved)
        elif self.fsdp is not None or is_named_state(saved):  # fsdp2's: any number of processes
            load_named_optimizer_state(self.model, self.optimizer, saved)
        else:
            check_resumable(saved, self.world, None, "the checkpoint")
            self.optimizer.load_state_dict(saved)
        self.scheduler.load_state_dict(state["scheduler"])
