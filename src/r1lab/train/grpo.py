"""GRPO: the one RL loop of r1lab (DeepSeek-R1, section 2.2.1; DeepSeekMath).

`GRPOTrainer.step` is the paper's algorithm, one call per stage, each stage in the module named
after it:

1. sample B prompts and G completions each from the current policy (`sampling`; DAPO's dynamic
   sampling wraps it);
2. score every completion with the rule-based rewards (`scoring`);
3. normalise rewards within each group -> advantages, no critic (`advantages`; PPO's critic,
   `critic`, gives GAE its values);
4. clipped-ratio policy loss (+ optional KL to a frozen reference), aggregated over the global
   batch's tokens, and the optimiser step(s) (`update`);
5. the step's metrics, reduced over ranks (`metrics`).

Every choice in 3-4 is a registered function named in the config and resolved once
(`r1lab.algorithms.resolve_algorithm`); this file never branches on algorithm names. In a
multi-process run (`World`) every rank draws the same global batch of prompts, samples and
trains its own whole groups, and only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from r1lab.algorithms import resolve_algorithm
from r1lab.config import RunConfig
from r1lab.data.templates import TEMPLATES, encode_prompts, prompt_of, save_template
from r1lab.models.loading import compute_dtype, rollout_dtype
from r1lab.rewards import RewardComposer
from r1lab.rollout import SamplingParams, build_engine
from r1lab.tracking import RunLogger
from r1lab.train import checkpoint as ckpt
from r1lab.train import fsdp_engine
from r1lab.train.advantages import compute_advantages
from r1lab.train.batch import TokenBatch
from r1lab.train.critic import Critic
from r1lab.train.deepspeed_engine import full_weights, policy_of
from r1lab.train.distributed import World, peak_memory
from r1lab.train.forward import Forward
from r1lab.train.metrics import policy_entropy, sample_records, step_metrics
from r1lab.train.progress import StepProgress
from r1lab.train.sampling import DynamicSampling, GroupSampler, PlainSampling
from r1lab.train.signals import GracefulStop
from r1lab.train.update import PolicyUpdate


class NonFiniteError(ValueError):
    """Too many optimiser steps in a row had a NaN/inf loss or gradient; the run stopped."""


class GRPOTrainer:
    """The policy, its optimiser, the rollout engine, the rewards and (PPO) a critic: one run."""

    def __init__(self, cfg: RunConfig, model, tokenizer, rows: Sequence[dict[str, Any]],
                 run_dir: str | Path, ref_model=None, *, critic_model=None,
                 eval_rows: Sequence[dict[str, Any]] = (), world: World | None = None) -> None:
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.run_dir, self.world = Path(run_dir), world or World.current()
        alg, r = cfg.algorithm, cfg.rollout
        # every registered name and option is resolved now, so a typo fails before any compute
        self.algorithm = resolve_algorithm(alg, cfg.critic)
        _check_world(self.algorithm, self.world)
        self.template = TEMPLATES.get(cfg.data.template)
        rewards = RewardComposer(components=cfg.rewards.components, workers=cfg.rewards.workers,
                                 timeout_s=cfg.rewards.timeout_s)
        self.fsdp = fsdp_engine.policy_of(model)  # train.strategy fsdp2: sharded + a replica
        self.strategy = _strategy(model, self.fsdp, self.world)
        # what samples, evaluates and is copied as the reference: the policy, or its replica
        self.rollout_model = model if self.fsdp is None else self.fsdp.replica
        if self.fsdp is not None:
            _check_fsdp(cfg, model, self.world)
            from r1lab.rollout.sync import ReplicaEngine

            self.engine = ReplicaEngine(  # refreshed from the shards after every update
                model, tokenizer, replica=self.fsdp.replica, state_fn=self.fsdp.full_state,
                make=lambda rep, tok: build_engine(r.engine, rep, tok, rollout_dtype(cfg)),
                eager=True)
        else:
            self.engine = build_engine(r.engine, model, tokenizer, rollout_dtype(cfg))
        if self.algorithm.kl is not None and ref_model is None:
            from r1lab.models import load_reference

            ref_model = load_reference(self.rollout_model)
        self.ref_model = ref_model if self.algorithm.kl is not None else None
        self.forward = Forward(cfg.train.micro_batch_size, r.temperature, cfg.train.packed,
                               lean=cfg.train.gradient_checkpointing,
                               token_budget=cfg.train.micro_batch_tokens,
                               autocast=compute_dtype(cfg.model))
        self.updater = PolicyUpdate(cfg, model, self.algorithm, self.forward, self.world)
        self.update = self.updater  # stage 4, called by the step (a test may wrap it)
        if cfg.critic and policy_of(model) is not None:
            raise ValueError("train.strategy: deepspeed does not run PPO's critic yet; use ddp")
        self.critic = Critic(cfg, model, self.forward, critic_model) if cfg.critic else None
        params = SamplingParams(n=r.group_size, max_new_tokens=r.max_new_tokens,
                                temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                stop=tuple(r.stop))
        self.sampler = GroupSampler(self.engine, rows, self.encode, rewards, params,
                                    batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                                    signal_key=alg.dynamic_sampling_metric, world=self.world)
        self.sampling = (DynamicSampling(self.sampler, max_refill_rounds=alg.max_refill_rounds,
                                         pad_id=self.engine.pad_id)
                         if alg.dynamic_sampling else PlainSampling(self.sampler))
        from r1lab.rollout.sync import MismatchProbe

        self.probe = (MismatchProbe(r.probe_completions, r.probe_warn_kl, r.temperature,
                                    self.engine.pad_id, self.forward_logprobs)
                      if r.probe_completions else None)
        self.eval_rows = list(eval_rows)
        self.step_count = 0
        self.samples: list[dict[str, Any]] = []  # the last step's transcripts, for samples.jsonl
        self.skipped_steps = 0  # steps with a non-finite loss/gradient, whose update was skipped
        self.consecutive_skips = 0
        self.stop_signal: str | None = None  # "SIGTERM" when a signal ended `fit` early
        self.last_checkpoint: Path | None = None
        self._saved_step: int | None = None

    # ---------------------------------------------------------------- wiring
    @property
    def rewards(self):
        """(completions, rows) -> RewardBatch; assign any such callable to replace the rewards."""
        return self.sampler.rewards

    @rewards.setter
    def rewards(self, fn) -> None:
        self.sampler.rewards = fn

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.updater.optimizer

    @property
    def scheduler(self):
        return self.updater.scheduler

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[int]]:
        d = self.cfg.data
        return encode_prompts(rows, self.tokenizer, d.template, d.prompt_field)

    def forward_logprobs(self, model, input_ids, attn, pos, prompt_len, temperature):
        """The trainer's own logprobs of padded completions (the probe's side of the check)."""
        from r1lab.train.batch import TokenBatch

        mask = attn[:, prompt_len:].float()  # [n, T]
        t = TokenBatch(input_ids=input_ids, attn=attn, pos=pos, prompt_len=prompt_len, mask=mask,
                       train_mask=mask, group_size=self.cfg.rollout.group_size)
        return self.forward.logprobs(model, t, torch.arange(len(input_ids)))

    def component_weights(self) -> torch.Tensor | None:
        components = getattr(self.rewards, "components", None)
        if not components or not hasattr(components[0], "weight"):
            return None
        return torch.tensor([c.weight for c in components], dtype=torch.float32)  # [C]

    # ---------------------------------------------------------------- one step
    def step(self) -> dict[str, Any]:
        """One GRPO step: sample, score, advantages, policy update, metrics."""
        cfg, alg, seconds = self.cfg, self.cfg.algorithm, {}
        t0 = time.perf_counter()
        with full_weights(self.model):  # ZeRO-3: whole weights while ranks forward unequally
            drawn = self.sampling(self.step_count)  # 1-2. B x G completions, scored
            seconds.update(drawn.seconds)
            tokens = TokenBatch.from_rollout(drawn.batch.rollout, self.engine.pad_id, alg.mask_truncated)
            with _timed(seconds, "reference"):  # the frozen reference policy, when beta > 0
                ref_logp = self.forward.reference(self.ref_model, tokens) if self.ref_model else None
            with _timed(seconds, "advantages"):  # 3. group-relative (PPO: GAE on the critic's values)
                values = self.critic.values(tokens) if self.critic else None
                adv = compute_advantages(self.algorithm, drawn.batch, tokens, ref_logp=ref_logp,
                                         values=values, beta=alg.beta, kl_in_reward=alg.kl_in_reward,
                                         component_weights=self.component_weights())
            # the entropy of the policy that sampled, before it moves
            entropy = policy_entropy(drawn.batch, tokens, self.rollout_model,
                                     cfg.rollout.temperature, self.world)
            # the engine's log-probs against the trainer's: from the update's first forwards
            # (at the weights the engine sampled with) where they can serve, else a forward here
            folded = self.probe is not None and self.updater.can_probe(tokens, adv)
            with _timed(seconds, "probe"):
                probe = self.probe(self.model, drawn.batch.rollout) if self.probe and not folded else {}
        with _timed(seconds, "update"):  # 4. clipped policy loss, optimiser step(s)
            update = self.update(tokens, adv, drawn.batch.rollout.logprobs,
                                 self.probe.completions if folded else 0)
            critic = self.critic.update(tokens, adv.rewards, values) if self.critic else {}
        if folded and self.updater.probed:
            idx = torch.cat([r for r, _ in self.updater.probed])
            train = torch.cat([lp for _, lp in self.updater.probed])
            probe = self.probe.compare(train, drawn.batch.rollout.logprobs[idx], tokens.mask[idx])
        getattr(self.engine, "policy_updated", lambda: None)()  # e.g. vLLM reloads the weights
        self.step_count += 1
        seconds["step"] = time.perf_counter() - t0
        self.samples = sample_records(self.step_count, drawn.first, cfg.log.samples_per_step,
                                      cfg.data.prompt_field)
        metrics = step_metrics(self.step_count, drawn, entropy, update, critic,  # 5. metrics
                               self.scheduler.get_last_lr()[0], seconds, self.world,
                               cfg.train.batch_size)
        if self.probe:  # the worst rank's (a rank without completions reports 0)
            for key in ("rollout/mismatch_kl", "rollout/mismatch_max"):
                metrics[key] = float(self.world.max(probe.get(key, 0.0)))
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Held-out pass@1 under the first sampled protocol of `eval` (greedy if none)."""
        from r1lab.evaluation import evaluate, paper_protocols

        protocols = paper_protocols(self.cfg.eval)
        proto = next((p for p in protocols if p.temperature > 0), protocols[0] if protocols else None)
        if proto is None or not self.eval_rows:
            return {}
        field = self.cfg.data.prompt_field
        res = evaluate(self.rollout_model, self.tokenizer, self.eval_rows[: self.cfg.eval.num_problems],
                       lambda row: self.template(prompt_of(row, field), self.tokenizer),
                       [proto], max_new_tokens=self.cfg.eval.max_new_tokens or self.cfg.rollout.max_new_tokens,
                       seed=self.cfg.train.seed, engine=self.cfg.rollout.engine)[proto.name]
        return {"eval/pass1": res["pass1"], "eval/think_rate": res["think_rate"],
                "eval/mean_len": res["mean_len"]}

    # ---------------------------------------------------------------- the run
    def fit(self, steps: int | None = None, progress: bool | None = None) -> list[dict[str, Any]]:
        """Run GRPO steps up to `train.steps` (or `steps` more), logging metrics.jsonl /
        samples.jsonl (rank 0), evaluating every `eval.every` steps and checkpointing every
        `train.save_every` steps and at the end.

        A resumed trainer continues from its step. SIGINT / SIGTERM (or a run-health check set
        to stop the run) finish the current step, checkpoint and return early (`stop_signal` says
        why). A step whose loss or gradient is not finite changes no weight and is counted;
        `train.max_consecutive_skips` of them in a row checkpoint the last good weights and
        raise NonFiniteError.
        """
        tc, every = self.cfg.train, self.cfg.eval.every
        target = tc.steps if steps is None else self.step_count + steps
        progress = (self.cfg.log.progress if progress is None else progress) and self.world.is_main
        history = []
        with (RunLogger(self.cfg, self.run_dir, self.world) as log, GracefulStop() as stop,
              StepProgress("grpo", target, enabled=progress) as bar):
            bar.update(advance=self.step_count)
            while self.step_count < target and not stop.requested and not log.stop_reason:
                m = self.step()
                m.update({k: float(self.world.max(v)) for k, v in peak_memory().items()})
                self._count_skips(m)
                if self.step_count == 1:  # the resolved backends and strategy, recorded with the run
                    m.update({f"backend/{k}": v for k, v in _backend(self.cfg).items()})
                    m.update({"distributed/strategy": self.strategy, "distributed/world_size": self.world.size})
                if every and self.step_count % every == 0:
                    with full_weights(self.model):  # ZeRO-3: every rank gathers, rank 0 evaluates
                        if self.world.is_main:
                            m.update(self.evaluate())
                        self._deepspeed_barrier()
                history.append(m)
                log.log_metrics(m)
                log.log_samples(self.samples)
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
            self.stop_signal = stop.requested or log.stop_reason
            if self._saved_step != self.step_count:
                self.checkpoint()
        return history

    def _count_skips(self, m: dict[str, Any]) -> None:
        if m.get("skipped_updates"):
            self.skipped_steps += 1
            self.consecutive_skips += 1
        else:
            self.consecutive_skips = 0
        m["skipped_steps"] = self.skipped_steps

    def save(self, path: str | Path) -> Path:
        """The policy and tokenizer in Hugging Face format (safetensors); PPO's critic beside."""
        path = Path(path)
        state = self._gathered_weights()
        with full_weights(self.model):  # ZeRO-3: gathered on every rank, written by rank 0
            if self.world.is_main:
                self._write_weights(path, state)
            self._deepspeed_barrier()
        self.world.barrier()
        return path

    def _gathered_weights(self) -> dict[str, torch.Tensor] | None:
        """fsdp2: the shards gathered whole on rank 0 (a collective); else None (the module's)."""
        return self.fsdp.rank0_state() if self.fsdp is not None else None

    def _write_weights(self, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        from r1lab.models.lora import is_lora, save_merged

        path.mkdir(parents=True, exist_ok=True)
        if is_lora(self.model):  # merged weights (plain transformers) + the adapter in adapter/
            save_merged(self.model, self.tokenizer, path)
        else:  # fsdp2: the gathered `state` through the replica's plain module
            self.rollout_model.save_pretrained(path, state_dict=state)
            self.tokenizer.save_pretrained(path)
        save_template(path, self.cfg, self.tokenizer)  # the prompts serve must build
        if self.critic is not None:
            self.critic.save(path)

    def _deepspeed_barrier(self) -> None:
        """Under deepspeed, the ranks wait for rank 0 inside a gathered block."""
        if policy_of(self.model) is not None:
            self.world.barrier()

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on."""
        return {"step": self.step_count, **self.updater.state_dict(), "rng": ckpt.rng_state(),
                "data": self.sampler.order.state_dict(),
                "skips": {"total": self.skipped_steps, "consecutive": self.consecutive_skips},
                **(self.critic.state_dict() if self.critic is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.critic is not None:
            self.critic.load_state_dict(state)
        self.step_count = int(state["step"])
        self.updater.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])
        self.sampler.order.load_state_dict(state["data"])
        self.skipped_steps = int(state["skips"]["total"])
        self.consecutive_skips = int(state["skips"]["consecutive"])

    def checkpoint(self) -> Path:
        """Write `checkpoints/step-N` atomically (weights, tokenizer, trainer state, config,
        manifest) and keep the newest `train.keep_last`. See `r1lab.train.checkpoint`."""
        collective = policy_of(self.model) is not None or self.fsdp is not None
        state = self.state_dict() if collective else None  # ZeRO partitions, FSDP2 state
        weights = self._gathered_weights()

        def write(tmp: Path) -> None:
            self._write_weights(tmp, weights)
            torch.save(state if collective else self.state_dict(), tmp / ckpt.STATE)
            (tmp / ckpt.CONFIG).write_text(self.cfg.to_yaml())

        path = self.run_dir / "checkpoints" / f"step-{self.step_count}"
        with full_weights(self.model):  # ZeRO-3: gathered on every rank, written by rank 0
            if self.world.is_main:
                path = ckpt.write_checkpoint(self.run_dir / "checkpoints", self.step_count, write,
                                             self.cfg.train.keep_last)
            self._deepspeed_barrier()
        self.world.barrier()  # no rank runs ahead of a checkpoint rank 0 is still writing
        self.last_checkpoint, self._saved_step = path, self.step_count
        return path

    def resume(self, path: str | Path) -> list[str]:
        """Continue from the checkpoint at `path` (weights, optimiser, scheduler, RNGs, data
        position, step; PPO's critic); metrics logged after it are dropped. Returns the config
        keys that differ from the checkpoint's, for the caller to warn about."""
        path = Path(path)
        if self.critic is not None:
            self.critic.load(path)
        from r1lab.models.lora import is_lora, load_adapter

        with full_weights(self.model, modify=True):  # ZeRO-3: into the gathered weights
            if is_lora(self.model):  # the checkpoint's adapter/; its merged weights are for users
                load_adapter(self.model, path)
            elif self.fsdp is not None:  # into the replica, and from it into the shards
                self.fsdp.load_checkpoint(path)
            else:
                ckpt.load_weights(self.model, path)
        self.load_state_dict(ckpt.load_state(path))
        if self.world.is_main:
            for name in ("metrics.jsonl", "samples.jsonl"):
                ckpt.trim_jsonl(self.run_dir / name, self.step_count)
        self.last_checkpoint, self._saved_step = path, self.step_count
        return ckpt.config_changes(path, self.cfg.model_dump(mode="json"))


def build_trainer(cfg: RunConfig, model, tokenizer, rows: Sequence[dict[str, Any]],
                  run_dir: str | Path, ref_model=None, **kwargs: Any) -> GRPOTrainer:
    """The trainer of `cfg`: GRPO, with PPO's critic when the config has a `critic:` section."""
    return GRPOTrainer(cfg, model, tokenizer, rows, run_dir, ref_model=ref_model, **kwargs)


@contextmanager
def _timed(seconds: dict[str, float], name: str):
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t


def _check_world(alg, world: World) -> None:
    """Statistics over the whole batch are per rank in a multi-process step: refuse them rather
    than silently train on something one process would not compute."""
    if world.size == 1:
        return
    from r1lab.config import ConfigError

    opts = alg.advantage.options
    if alg.advantage.name == "normalize_then_sum":
        raise ConfigError("algorithm.advantage: 'normalize_then_sum' normalises the summed rewards "
                          f"over the whole batch, which is not supported across processes yet "
                          f"({world.size} here); use 'grpo'")
    if opts.get("scale") == "batch":
        raise ConfigError("algorithm.scale_rewards: 'batch' (the std of the whole batch) is not "
                          f"supported across processes yet ({world.size} here); use 'group'")
    if opts.get("whiten"):
        raise ConfigError("critic.whiten: batch whitening of GAE advantages is not supported "
                          f"across processes yet ({world.size} here); set critic.whiten: false")


def _check_fsdp(cfg: RunConfig, model, world: World) -> None:
    """What `train grpo` does not run under fsdp2, refused before the first step."""
    from r1lab.config import ConfigError
    from r1lab.models.lora import is_lora

    if cfg.critic:
        raise ConfigError("train.strategy: fsdp2 does not run PPO's critic yet; use ddp")
    if is_lora(model):
        raise ConfigError("train.strategy: fsdp2 with LoRA (model.lora) is not supported yet: "
                          "an adapter is small, use ddp")
    if cfg.train.batch_size < world.size:
        raise ConfigError(f"train.strategy: fsdp2 needs a group on every rank: train.batch_size="
                          f"{cfg.train.batch_size} prompts over {world.size} processes")


def _strategy(model: Any, fsdp: Any, world: World) -> str:
    """The strategy the policy is held under (`r1lab.train.distributed.resolve_strategy`)."""
    if fsdp is not None:
        return "fsdp2"
    if policy_of(model) is not None:
        return "deepspeed"
    return "ddp" if world.size > 1 else "none"


def _backend(cfg: RunConfig) -> dict[str, Any]:
    """The resolved `backend` section, flat: `{kernels: on, chosen_by/kernels: "probe ..."}`."""
    out: dict[str, Any] = {}
    for key, value in cfg.backend.model_dump(mode="json").items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
