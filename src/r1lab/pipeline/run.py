"""`r1lab train grpo CONFIG`: one GRPO run on any local HF causal LM and any prompt dataset."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from r1lab.config import RunConfig, save_config
from r1lab.data.prompts import load_prompt_rows  # noqa: F401  (re-exported: pipeline.run.load_prompt_rows)
from r1lab.data.templates import TEMPLATES
from r1lab.data.validate import check_config, check_context, check_reward_rows, check_tokenizer
from r1lab.evaluation import evaluate, paper_protocols
from r1lab.models import load_policy
from r1lab.train.checkpoint import resolve_resume
from r1lab.train.common import seed_everything
from r1lab.train.deepspeed_engine import full_weights, policy_of
from r1lab.train.distributed import World, offload_requested, prepare_policy, resolve_strategy
from r1lab.train.grpo import build_trainer  # GRPO, or PPO when the config has a critic
from r1lab.train.memory import enable_gradient_checkpointing


def heldout_eval(cfg: RunConfig, model, tokenizer, heldout: list[dict[str, Any]], out: Path) -> dict[str, float]:
    """Evaluate on the held-out rows under the paper's protocols (`cfg.eval`); writes
    `out/eval.json` (every metric) and returns {protocol: pass@1}."""
    template = TEMPLATES.get(cfg.data.template)
    res = evaluate(model, tokenizer, heldout[: cfg.eval.num_problems],
                   lambda r: template(r["prompt"], tokenizer), paper_protocols(cfg.eval),
                   max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
    (out / "eval.json").write_text(json.dumps(res, indent=2))
    return {k: v["pass1"] for k, v in res.items()}


def run_grpo(cfg: RunConfig, out_dir: str | Path, console: Console | None = None,
             resume: str | None = None) -> dict[str, Any]:
    """Train, save `final/`, evaluate on the held-out split. `resume` is `latest` (the newest
    valid checkpoint of `out_dir`, or a fresh start, with a warning, when it has none), `auto`
    (the same, without the warning) or a checkpoint / run path.

    The config's names, every data row and the tokenizer are checked before the run folder is
    written or a step is taken. A SIGINT / SIGTERM ends the run after a checkpoint, with
    `result["stopped"]` set and no final/eval.
    """
    console = console or Console()
    out = Path(out_dir)
    check_config(cfg)  # registered names and user rewards, before anything is loaded
    train_rows, heldout = load_prompt_rows(cfg)  # DataError names file:line
    check_reward_rows(train_rows, cfg)  # e.g. the code reward's tests key
    warn = lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False)  # noqa: E731
    # `auto` (the pipeline's RL stages): the newest checkpoint if any, else a fresh start, silently
    start = resolve_resume("latest" if resume == "auto" else resume, out, warn) if resume else None
    world = World.current()  # torchrun / accelerate launch: N ranks, each training whole groups
    start = world.broadcast(start)  # rank 0's choice of checkpoint, for every rank
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model, tokenizer = load_policy(cfg, seed=cfg.train.seed)
    if cfg.train.gradient_checkpointing:  # the padded forward, layers recomputed, lean logprobs
        enable_gradient_checkpointing(model)
    prepare_policy(model, cfg.train.strategy, world,  # ddp: every rank starts from rank 0's weights
                   offload=offload_requested(cfg.train.offload), zero_stage=cfg.train.zero_stage,
                   deepspeed_config=cfg.train.deepspeed_config,
                   replica=True)  # fsdp2: an unsharded copy samples and evaluates
    if world.size > 1 and world.is_main:
        console.print(f"{world.size} processes: train.strategy {cfg.train.strategy} -> "
                      f"{resolve_strategy(cfg.train.strategy, world)}", highlight=False)
    check_tokenizer(tokenizer, model, cfg)
    check_context(train_rows, tokenizer, model, cfg)  # prompt + max_new_tokens fit the model
    out.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, model, tokenizer, train_rows, out, eval_rows=heldout)
    if start is not None:
        changed = trainer.resume(start)
        console.print(f"resuming from {start} at step {trainer.step_count} of {cfg.train.steps}")
        if changed:
            warn(f"the config differs from the checkpoint's in: {', '.join(changed)}")
        if trainer.step_count >= cfg.train.steps:
            warn(f"the run is already at step {trainer.step_count} (train.steps={cfg.train.steps}):"
                 " no step to take; raise train.steps to train further")
    elif resume and resume != "auto":
        warn(f"--resume: no checkpoint in {out / 'checkpoints'}; starting from step 0")
    trainer.fit()
    if trainer.stop_signal:
        # a signal exits 128 + its number; an alarm of log.stop_on (r1lab.health) exits 3
        sig = signal.Signals.__members__.get(trainer.stop_signal)
        code = 128 + sig.value if sig is not None else 3
        console.print(f"[yellow]{trainer.stop_signal}[/]: stopped after step {trainer.step_count}; "
                      f"checkpoint {trainer.last_checkpoint}. Continue with --resume.", highlight=False)
        return {"stopped": trainer.stop_signal, "steps": trainer.step_count,
                "checkpoint": str(trainer.last_checkpoint), "exit_code": code}
    final = trainer.save(out / "final")
    result: dict[str, Any] = {"steps": trainer.step_count, "final": str(final),
                              "skipped_steps": trainer.skipped_steps,
                              "train_seconds": time.perf_counter() - t0}
    with full_weights(model):  # ZeRO-3: whole weights on every rank while rank 0 evaluates
        if world.is_main and heldout:
            result["eval"] = heldout_eval(cfg, trainer.rollout_model, tokenizer, heldout, out)
        if policy_of(model) is not None:
            world.barrier()
    if not world.is_main:  # rank 0 evaluates and writes the results
        return result
    (out / "result.json").write_text(json.dumps(result, indent=2))
    console.print(f"GRPO finished: {result}")
    return result
