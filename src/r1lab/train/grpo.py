"""GRPO: the one RL loop of r1lab (DeepSeek-R1, section 2.2.1; DeepSeekMath).

One step reads as the paper's algorithm:

1. sample B prompts and G completions each from the current policy (old policy = current);
2. score every completion with the rule-based rewards (accuracy + format by default);
3. normalise rewards within each group -> advantages (no critic, no value model);
4. clipped-ratio policy loss (+ optional KL to a frozen reference), aggregated over tokens;
5. one optimiser step (or `num_iterations` passes over mini-batches of the same rollouts).

Every choice in 3-4 is a registered function named in the config (`algorithm.advantage`,
`algorithm.loss`, `algorithm.aggregation`, `algorithm.kl_estimator`); this file never branches on
algorithm names.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from r1lab.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, masked_mean
from r1lab.algorithms.metrics import zero_signal_groups
from r1lab.config import RunConfig
from r1lab.data.templates import TEMPLATES, encode_prompts
from r1lab.rewards import RewardComposer
from r1lab.rollout import RolloutBatch, SamplingParams, build_engine
from r1lab.train import checkpoint as ckpt
from r1lab.train.common import (
    JsonlWriter,
    call_with,
    completion_logprobs,
    join_prompt_completion,
    thinks,
)
from r1lab.train.dapo import Sampled, fill_batch, loss_mask, sampled_entropy
from r1lab.train.packed import PackedBatch, packed_logprobs, packed_support
from r1lab.train.progress import StepProgress
from r1lab.train.signals import GracefulStop


class NonFiniteError(ValueError):
    """Too many optimiser steps in a row had a NaN/inf loss or gradient; the run stopped."""


class GRPOTrainer:
    """Owns the policy, optimiser, rollout engine and rewards for one GRPO run."""

    def __init__(self, cfg: RunConfig, model, tokenizer, rows: Sequence[dict[str, Any]],
                 run_dir: str | Path, ref_model=None) -> None:
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.rows = list(rows)
        self.run_dir = Path(run_dir)
        alg = cfg.algorithm
        # resolve every registered name now, so a typo fails before any compute
        self.advantage_fn = ADVANTAGES.get(alg.advantage)
        self.loss_fn = POLICY_LOSSES.get(alg.loss)
        self.aggregate_fn = AGGREGATIONS.get(alg.aggregation)
        self.kl_fn = KL_ESTIMATORS.get(alg.kl_estimator) if alg.beta > 0 else None
        self.template = TEMPLATES.get(cfg.data.template)
        self.rewards = RewardComposer(components=cfg.rewards.components,
                                      workers=cfg.rewards.workers, timeout_s=cfg.rewards.timeout_s)
        self.engine = build_engine(cfg.rollout.engine, model, tokenizer)
        if alg.beta > 0 and ref_model is None:
            from r1lab.models import load_reference

            ref_model = load_reference(model)
        self.ref_model = ref_model
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
        )
        warmup = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.adv_options = {"eps": alg.adv_eps, "ddof": alg.adv_ddof, "scale": alg.scale_rewards}
        self.loss_options = {"eps_low": alg.eps_low, "eps_high": alg.eps_high,
                             "dual_clip_c": alg.dual_clip_c}
        self.step_count = 0
        self.data_rng = random.Random(cfg.train.seed)
        self._order: list[int] = []
        self.skipped_steps = 0  # steps with a non-finite loss/gradient, whose update was skipped
        self.consecutive_skips = 0
        self.stop_signal: str | None = None  # "SIGTERM" when a signal ended `fit` early
        self.last_checkpoint: Path | None = None
        self._saved_step: int | None = None

    # ---------------------------------------------------------------- data
    def next_prompts(self) -> list[dict[str, Any]]:
        """The next B rows, reshuffled each epoch (a seeded permutation)."""
        B = self.cfg.train.batch_size
        while len(self._order) < B:
            fresh = list(range(len(self.rows)))
            self.data_rng.shuffle(fresh)
            self._order += fresh
        picked, self._order = self._order[:B], self._order[B:]
        return [self.rows[i] for i in picked]

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[int]]:
        d = self.cfg.data
        return encode_prompts(rows, self.tokenizer, d.template, d.prompt_field)

    # ---------------------------------------------------------------- one step
    def step(self) -> dict[str, Any]:
        cfg, alg = self.cfg, self.cfg.algorithm
        t0 = time.perf_counter()
        G = cfg.rollout.group_size
        spent = {"generate": 0.0, "reward": 0.0}

        def sample(round_: int) -> Sampled:
            rows = self.next_prompts()
            params = SamplingParams(
                n=G, max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, stop=tuple(cfg.rollout.stop),
                seed=cfg.train.seed * 1_000_003 + self.step_count + (round_ << 32),
            )
            t = time.perf_counter()
            rollout: RolloutBatch = self.engine.generate(self.encode(rows), params)
            t_gen = time.perf_counter()
            # length rewards (e.g. DAPO's `overlong`) read the token count from the row
            lengths = rollout.lengths.long().tolist()  # [N]
            group_rows = [{**rows[i // G], "completion_tokens": n} for i, n in enumerate(lengths)]
            scored = self.rewards(rollout.texts, group_rows)
            spent["generate"] += t_gen - t
            spent["reward"] += time.perf_counter() - t_gen
            key = alg.dynamic_sampling_metric
            signal = (torch.tensor(scored.components[key], dtype=torch.float32)
                      if key in scored.components else None)
            return Sampled(rows, rollout, torch.tensor(scored.total, dtype=torch.float32), scored,
                           signal)

        # 1-2. sample G completions per prompt and score them; with DAPO's dynamic sampling, groups
        # whose `dynamic_sampling_metric` (accuracy) is all equal are dropped and refilled
        if alg.dynamic_sampling:
            first, batch, refills = fill_batch(sample, batch_groups=cfg.train.batch_size,
                                               max_refill_rounds=alg.max_refill_rounds,
                                               pad_id=self.engine.pad_id)
        else:
            first = batch = sample(0)
            refills = 0
        rollout, rewards = batch.rollout, batch.rewards  # [N]
        t_rew = time.perf_counter()
        # 3. group-relative advantages
        mask = rollout.completion_mask  # [N, T]
        input_ids, attn, pos, L = join_prompt_completion(
            rollout.prompt_ids, rollout.completion_ids, mask, self.engine.pad_id)  # [N, L+T]
        ref_logp = self._ref_logprobs(input_ids, attn, pos, L) if self.kl_fn else None  # [N, T]
        adv_rewards = rewards
        if ref_logp is not None and alg.kl_in_reward:  # KL as a reward penalty, not a loss term
            kl_seq = (self.kl_fn(rollout.logprobs, ref_logp) * mask).sum(-1)  # [N]
            adv_rewards = rewards - alg.beta * kl_seq
        advantages, extra = self._advantages(adv_rewards, mask, input_ids, attn, pos, L)  # [N, T]
        # truncated completions still count in their group's statistics, but get no loss
        train_mask = loss_mask(mask, rollout.finish_reasons) if alg.mask_truncated else mask
        if rollout.entropy is not None:  # the sampler's own distribution: the policy that sampled
            entropy = masked_mean(rollout.entropy, train_mask).item() if train_mask.sum() else 0.0
        else:
            entropy = sampled_entropy(self.model, input_ids, attn, pos, L, train_mask,
                                      cfg.rollout.temperature)
        # 4-5. clipped policy loss and optimiser step(s)
        update = self._update(input_ids, attn, pos, L, train_mask, rollout.logprobs, advantages,
                              ref_logp)
        self.step_count += 1
        t_end = time.perf_counter()
        # curves come from the first, unfiltered sample: comparable with or without refills
        scored, texts, f_rewards = first.scored, first.rollout.texts, first.rewards
        metrics = {
            "step": self.step_count,
            "reward": f_rewards.mean().item(),
            "reward_std": f_rewards.std().item() if len(f_rewards) > 1 else 0.0,
            **{f"reward/{k}": sum(v) / len(v) for k, v in scored.components.items()},
            **{f"rewards/{k}": v for k, v in scored.metrics.items()},
            "reward_errors": scored.errors,
            "think_rate": sum(thinks(t) for t in texts) / len(texts),
            "completion_len": first.rollout.lengths.float().mean().item(),
            "truncated_rate": sum(f == "length" for f in first.rollout.finish_reasons) / len(texts),
            "zero_signal_groups": zero_signal_groups(f_rewards, G).float().mean().item(),
            "entropy": entropy,
            **({"refill_rounds": refills, "kept_groups": batch.num_groups / cfg.train.batch_size}
               if alg.dynamic_sampling else {}),
            **extra,
            **update,
            "lr": self.scheduler.get_last_lr()[0],
            "generate_s": spent["generate"], "reward_s": spent["reward"],
            "update_s": t_end - t_rew, "step_s": t_end - t0,
        }
        if "accuracy" in scored.components:
            metrics["accuracy"] = metrics["reward/accuracy"]
        self._last_samples = [
            {"step": self.step_count, "prompt": first.rows[i // G][cfg.data.prompt_field],
             "answer": first.rows[i // G].get(cfg.data.answer_field), "completion": texts[i],
             "reward": scored.total[i],
             "rewards": {k: v[i] for k, v in scored.components.items()}}
            for i in range(0, len(texts), max(1, len(texts) // max(1, cfg.log.samples_per_step)))
        ][: cfg.log.samples_per_step]
        return metrics

    def _advantages(self, rewards, mask, input_ids, attn, pos, L) -> tuple[torch.Tensor, dict[str, float]]:
        """Advantages [N, T] and extra metrics. GRPO needs no critic; `PPOTrainer` overrides this."""
        advantages = call_with(self.advantage_fn, self.adv_options, rewards=rewards,
                               group_size=self.cfg.rollout.group_size, mask=mask)  # [N, T]
        return advantages, {}

    def _ref_logprobs(self, input_ids, attn, pos, L) -> torch.Tensor:
        """Reference logprobs [N, T], under inference mode, micro-batch by micro-batch."""
        out = torch.zeros((len(input_ids), input_ids.shape[1] - L), device=input_ids.device)
        rows = torch.arange(len(input_ids), device=input_ids.device)
        with torch.inference_mode():
            for idx in self._micro_batches(self.ref_model, rows, attn[:, L:].sum(-1), input_ids.shape[1]):
                out[idx] = self._logprobs(self.ref_model, idx, input_ids, attn, pos, L)
        return out  # made outside inference mode: autograd may save it for the KL's backward

    def _packed(self, model, width: int) -> bool:
        """Whether `model`'s forward on sequences of up to `width` tokens is `packed_logprobs`."""
        return self.cfg.train.packed and packed_support(model, width) is None

    def _micro_batches(self, model, rows: torch.Tensor, lengths: torch.Tensor,
                       width: int) -> list[torch.Tensor]:
        """Packed: consecutive rows (a group's completions share one prompt computation).
        Padded: rows grouped by length, each chunk cut to its own longest sequence."""
        mb = self.cfg.train.micro_batch_size
        if self._packed(model, width):
            return [rows[i:i + mb] for i in range(0, len(rows), mb)]
        return _micro_batches(rows, lengths[rows], mb)

    def _logprobs(self, model, idx, input_ids, attn, pos, L) -> torch.Tensor:
        """Token logprobs [len(idx), T] of completions `idx` under `model` (grad as the caller's)."""
        temperature = self.cfg.rollout.temperature
        if self._packed(model, input_ids.shape[1]):
            pb = PackedBatch.from_padded(input_ids, attn, L, idx)
            return packed_logprobs(model, pb, temperature)[0]
        return completion_logprobs(model, input_ids[idx], attn[idx], pos[idx], L, temperature)

    def _inert_zero_advantage(self) -> bool:
        """Whether the policy loss gives a token whose advantage is 0 exactly zero loss and zero
        gradient (true of every `ratio x advantage` loss); probed once on a small tensor, so no
        loss name is special-cased here."""
        if getattr(self, "_inert", None) is None:
            logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
            per_token, _ = call_with(self.loss_fn, self.loss_options, logp=logp,
                                     old_logp=torch.tensor([[-1.5, -1.0, -0.5]]),
                                     advantages=torch.zeros(1, 3), mask=torch.ones(1, 3))
            per_token.sum().backward()
            self._inert = bool((per_token == 0).all()) and bool((logp.grad == 0).all())
        return self._inert

    def _update(self, input_ids, attn, pos, L, mask, sampler_logp, advantages, ref_logp) -> dict[str, float]:
        """`num_iterations` passes over the rollouts; one optimiser step per mini-batch
        (`algorithm.mini_batch_size` completions, default all), accumulated over micro-batches.

        With one optimiser step the policy has not moved since sampling, so old logprobs are the
        current ones detached (ratio exactly 1, no extra forward). With more steps the sampler's
        logprobs are the old policy's (taken once per batch, at sampling).

        Speed, all exact: micro-batches group completions of similar length and are cut to their
        own longest sequence; with no KL term in the loss, completions whose advantage is exactly
        0 everywhere are left out of the forward/backward (their loss and gradient are 0), while
        the normalisers still count their tokens, so the loss and the update are unchanged (the
        clip/KL *metrics* then average over the completions that were computed).
        """
        cfg, alg = self.cfg, self.cfg.algorithm
        N = len(input_ids)
        mini = alg.mini_batch_size or N
        starts = [j for _ in range(alg.num_iterations) for j in range(0, N, mini)]  # one step each
        totals: dict[str, float] = {}
        kl_in_loss = ref_logp is not None and not alg.kl_in_reward
        skip_inert = not kl_in_loss and self._inert_zero_advantage()
        lengths = attn[:, L:].sum(-1)  # [N] completion lengths
        self.model.train()
        for j in starts:
            end = min(j + mini, N)
            num_tokens, num_seqs = mask[j:end].sum().clamp(min=1), float(end - j)  # this step's
            rows = torch.arange(j, end, device=mask.device)
            if skip_inert:
                rows = rows[(advantages[j:end] * mask[j:end]).ne(0).any(-1)]
                totals["skipped_rows"] = totals.get("skipped_rows", 0.0) + (end - j - len(rows))
            self.optimizer.zero_grad(set_to_none=True)
            for idx in self._micro_batches(self.model, rows, lengths, input_ids.shape[1]):
                m = mask[idx]  # [n, T]
                logp = self._logprobs(self.model, idx, input_ids, attn, pos, L)  # [n, T]
                old = logp.detach() if len(starts) == 1 else sampler_logp[idx]
                per_token, lm = call_with(self.loss_fn, self.loss_options, logp=logp,
                                          old_logp=old, advantages=advantages[idx], mask=m)
                if kl_in_loss:
                    kl = self.kl_fn(logp, ref_logp[idx])  # [n, T]
                    per_token = per_token + alg.beta * kl
                    lm["kl"] = ((kl * m).sum() / m.sum().clamp(min=1)).detach()
                loss = self.aggregate_fn(per_token, m, num_tokens=num_tokens, num_seqs=num_seqs,
                                         norm_len=cfg.rollout.max_new_tokens)
                loss.backward()
                share = m.sum().item() / max(1.0, num_tokens.item())
                totals["loss"] = totals.get("loss", 0.0) + loss.item() / len(starts)
                for k, v in lm.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * share / len(starts)
            if len(rows) == 0:  # every completion was inert: the optimiser still steps on zeros
                totals.setdefault("loss", 0.0)
                for p in self.model.parameters():
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm.item() / len(starts)
            if self._skip_nonfinite(totals["loss"], grad_norm, totals):  # numerics guard
                continue
            self.optimizer.step()
        self.scheduler.step()
        self.model.eval()
        getattr(self.engine, "policy_updated", lambda: None)()  # e.g. vLLM reloads the weights
        return totals

    # ---------------------------------------------------------------- the run
    def fit(self, steps: int | None = None, progress: bool | None = None) -> list[dict[str, Any]]:
        """Run GRPO steps up to `train.steps` (or `steps` more), logging metrics.jsonl /
        samples.jsonl and checkpointing every `train.save_every` steps and at the end.

        A resumed trainer continues from its step. SIGINT / SIGTERM finish the current step,
        checkpoint and return early (`stop_signal` says which). A step whose loss or gradient is
        not finite changes no weight and is counted; `train.max_consecutive_skips` of them in a
        row checkpoint the last good weights and raise NonFiniteError.
        """
        tc = self.cfg.train
        target = tc.steps if steps is None else self.step_count + steps
        progress = self.cfg.log.progress if progress is None else progress
        metrics_log = JsonlWriter(self.run_dir / "metrics.jsonl")
        samples_log = JsonlWriter(self.run_dir / "samples.jsonl")
        history = []
        try:
            with GracefulStop() as stop, StepProgress("grpo", target, enabled=progress) as bar:
                bar.update(advance=self.step_count)
                while self.step_count < target and not stop.requested:
                    m = self.step()
                    self._count_skips(m)
                    history.append(m)
                    metrics_log.write(m)
                    for s in self._last_samples:
                        samples_log.write(s)
                    bar.update(reward=f"{m['reward']:.2f}", acc=f"{m.get('accuracy', float('nan')):.2f}",
                               think=f"{m['think_rate']:.2f}", len=f"{m['completion_len']:.0f}")
                    if self.consecutive_skips >= tc.max_consecutive_skips:
                        path = self.checkpoint()
                        raise NonFiniteError(
                            f"stopped at step {self.step_count}: {self.consecutive_skips} steps in a "
                            f"row had a NaN/inf loss or gradient (train.max_consecutive_skips="
                            f"{tc.max_consecutive_skips}); their updates were skipped, so {path} "
                            "holds the last good weights. Check the rewards for NaN, or lower optim.lr.")
                    if tc.save_every and self.step_count % tc.save_every == 0:
                        self.checkpoint()
                self.stop_signal = stop.requested
                if self._saved_step != self.step_count:
                    self.checkpoint()
        finally:
            metrics_log.close()
            samples_log.close()
        return history

    def _count_skips(self, m: dict[str, Any]) -> None:
        if m.get("skipped_updates"):
            self.skipped_steps += 1
            self.consecutive_skips += 1
        else:
            self.consecutive_skips = 0
        m["skipped_steps"] = self.skipped_steps

    def _skip_nonfinite(self, loss: float, grad_norm: torch.Tensor, totals: dict[str, float]) -> bool:
        """Numerics guard: an optimiser step with a NaN/inf loss or gradient is not taken (weights
        and optimiser state stay as they were) and is counted in `skipped_updates`."""
        if math.isfinite(loss) and bool(torch.isfinite(grad_norm)):
            return False
        self.optimizer.zero_grad(set_to_none=True)
        totals["skipped_updates"] = totals.get("skipped_updates", 0) + 1
        return True

    def save(self, path: str | Path) -> Path:
        """The policy and tokenizer in Hugging Face format (safetensors)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on."""
        return {"step": self.step_count, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(),
                "data": {"rng": self.data_rng.getstate(), "order": list(self._order)},
                "skips": {"total": self.skipped_steps, "consecutive": self.consecutive_skips}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.data_rng.setstate(ckpt._tuples(state["data"]["rng"]))
        self._order = [int(i) for i in state["data"]["order"]]
        self.skipped_steps = int(state["skips"]["total"])
        self.consecutive_skips = int(state["skips"]["consecutive"])

    def checkpoint(self) -> Path:
        """Write `checkpoints/step-N` atomically (weights, tokenizer, trainer state, config,
        manifest) and keep the newest `train.keep_last`. See `r1lab.train.checkpoint`."""
        def write(tmp: Path) -> None:
            self.save(tmp)
            torch.save(self.state_dict(), tmp / ckpt.STATE)
            (tmp / ckpt.CONFIG).write_text(self.cfg.to_yaml())

        self.last_checkpoint = ckpt.write_checkpoint(self.run_dir / "checkpoints", self.step_count,
                                                     write, self.cfg.train.keep_last)
        self._saved_step = self.step_count
        return self.last_checkpoint

    def resume(self, path: str | Path) -> list[str]:
        """Continue from the checkpoint at `path` (weights, optimiser, scheduler, RNGs, data
        position, step); metrics logged after it are dropped. Returns the config keys that
        differ from the checkpoint's, for the caller to warn about."""
        path = Path(path)
        ckpt.load_weights(self.model, path)
        self.load_state_dict(ckpt.load_state(path))
        for name in ("metrics.jsonl", "samples.jsonl"):
            ckpt.trim_jsonl(self.run_dir / name, self.step_count)
        self.last_checkpoint, self._saved_step = path, self.step_count
        return ckpt.config_changes(path, self.cfg.model_dump(mode="json"))


#: the cost of one more forward/backward call, in padded tokens (Python, kernel launches,
#: smaller matmuls); splitting a micro-batch by length must save more padding than this
CALL_COST_TOKENS = 96


def _micro_batches(rows: torch.Tensor, lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`rows` split into chunks of at most `size`, each padded only to its own longest sequence.

    Rows are sorted by length and cut where it saves padded tokens: a dynamic programme over the
    cut points minimises sum(rows x longest) + CALL_COST_TOKENS per chunk. With 64 completions of
    which a third stop early this trims ~15% of the positions a single padded batch computes.

    >>> [c.tolist() for c in _micro_batches(torch.arange(6), torch.tensor([90, 5, 90, 4, 90, 6]), 8)]
    [[3, 1, 5], [0, 2, 4]]
    """
    n = len(rows)
    if n == 0:
        return []
    order = torch.argsort(lengths, stable=True)
    rows, ls = rows[order], lengths[order].tolist()
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - size), j):  # chunk = sorted rows i..j-1, padded to ls[j-1]
            cost = best[i] + (j - i) * ls[j - 1] + CALL_COST_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(rows[cut[j]:j])
        j = cut[j]
    return chunks[::-1]
