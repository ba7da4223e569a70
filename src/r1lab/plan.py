"""`r1lab plan CONFIG` (and `r1lab train grpo|sft CONFIG --plan`): what a run will do, before it
starts, with no model loaded.

* the batch arithmetic: prompts, completions and tokens per optimiser step, globally and per
  process; optimiser steps per rollout batch (how off-policy the run is: 1 = on-policy);
* every registered function the config chooses, with its resolved options; whether a
  reference model is loaded;
* a memory estimate (weights, gradients, optimiser state, activations, KV cache) per process
  for the dtype, sequence lengths and sharding, from the model's config.json (`model.path`) or
  the tiny config;
* the settings that have no effect in this combination.

The numbers are estimates of what the run *allocates*, not of what the allocator reserves:
activations follow Korthikanti et al. 2022 (`34 s b h + 5 a s^2 b` bytes per layer in 16-bit,
no recomputation) plus the float32 logits of one micro-batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.config import RunConfig

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Plan:
    command: str
    nproc: int
    batch: dict[str, Any] = field(default_factory=dict)
    functions: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    reference: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    no_effect: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ceil_div(a: int, b: int) -> int:
    """a / b rounded up.

    >>> ceil_div(10, 4), ceil_div(8, 4)
    (3, 2)
    """
    return -(-a // b)


def rl_batch(cfg: RunConfig, nproc: int) -> dict[str, Any]:
    """The batch arithmetic of one GRPO/PPO step; per-process numbers follow `World.shard` (each
    rank owns whole groups) with the optimiser step's mini-batch split evenly over the ranks.

    >>> b = rl_batch(RunConfig.model_validate({"train": {"batch_size": 4}, "rollout": {"group_size": 8},
    ...     "algorithm": {"mini_batch_size": 16, "num_iterations": 2}}), nproc=2)
    >>> b["completions_per_rollout"], b["optimizer_steps_per_rollout"], b["prompts_per_optimizer_step"]
    (32, 4, 2)
    >>> b["completions_per_rollout_per_process"], b["completions_per_optimizer_step_per_process"]
    (16, 8)
    """
    alg, B, G = cfg.algorithm, cfg.train.batch_size, cfg.rollout.group_size
    N = B * G
    mini = min(alg.mini_batch_size or N, N)
    steps = alg.num_iterations * ceil_div(N, mini)
    groups_rank = ceil_div(B, nproc)
    per_rank_step = ceil_div(mini, nproc)
    max_prompt = _prompt_tokens(cfg)
    seq = (max_prompt or 0) + cfg.rollout.max_new_tokens
    return {
        "prompts_per_rollout": B, "completions_per_rollout": N,
        "completions_per_optimizer_step": mini, "prompts_per_optimizer_step": mini / G if mini % G else mini // G,
        "optimizer_steps_per_rollout": steps,
        "off_policy": "on-policy (one optimiser step per rollout batch)" if steps == 1 else
                      f"off-policy: {steps} optimiser steps per rollout batch (the last one "
                      f"trains on samples {steps - 1} updates old)",
        "completion_tokens_per_optimizer_step_max": mini * cfg.rollout.max_new_tokens,
        "tokens_per_optimizer_step_max": mini * seq if max_prompt is not None else None,
        "prompt_tokens_max": max_prompt,
        "prompts_per_rollout_per_process": groups_rank,
        "completions_per_rollout_per_process": groups_rank * G,
        "completions_per_optimizer_step_per_process": per_rank_step,
        "micro_batches_per_optimizer_step_per_process": ceil_div(per_rank_step, cfg.train.micro_batch_size),
        "rollout_rounds_max": 1 + (alg.max_refill_rounds if alg.dynamic_sampling else 0),
        "optimizer_steps_total": steps * cfg.train.steps,
    }


def sft_batch(cfg: RunConfig, nproc: int) -> dict[str, Any]:
    """The batch arithmetic of `train sft` (rows, not prompts x G)."""
    s = cfg.sft
    return {"rows_per_optimizer_step": s.batch_size, "optimizer_steps_total": s.steps,
            "rows_per_optimizer_step_per_process": ceil_div(s.batch_size, nproc),
            "rows_seen_total": s.batch_size * s.steps, "row_tokens_max": _sft_tokens(cfg)}


def _sft_tokens(cfg: RunConfig) -> int | None:
    """Longest prompt + completion in tokens over the first 64 rows of a local data file."""
    try:
        from r1lab.data.loading import load_rows
        from r1lab.data.templates import TEMPLATES

        d, tok = cfg.data, _tokenizer(cfg)
        if tok is None or not Path(d.source).is_file():
            return None
        rows = load_rows(d.source, required=(d.prompt_field, cfg.sft.completion_field))[:64]
        template = TEMPLATES.get(d.template if d.template != "auto" else "r1_zero")
        return max(len(tok(template(r[d.prompt_field], tok) + r[cfg.sft.completion_field])["input_ids"])
                   for r in rows) + 1
    except Exception:  # a plan never fails on an estimate
        return None


def _prompt_tokens(cfg: RunConfig) -> int | None:
    """Longest prompt in tokens over the first 64 prompts, when they are cheap to get (a
    synthetic task, or a local file, and the tiny tokenizer or model.path's); else None."""
    try:
        from r1lab.data.templates import TEMPLATES

        d = cfg.data
        if d.source.startswith("synthetic:"):
            from r1lab.data.tasks import generate

            rows = [p.row() for p in generate(d.source.split(":", 1)[1], 64, split="train",
                                              seed=d.seed, min_digits=d.min_digits,
                                              max_digits=d.max_digits)]
        elif Path(d.source).is_file():
            from r1lab.data.loading import load_rows

            rows = load_rows(d.source, required=(d.prompt_field,))[:64]
        else:
            return None
        tok = _tokenizer(cfg)
        if tok is None:
            return None
        template = TEMPLATES.get(d.template if d.template != "auto" else
                                 ("tiny" if cfg.model.path is None else "r1_zero"))
        return max(len(tok(template(r[d.prompt_field], tok))["input_ids"]) for r in rows)
    except Exception:  # a plan never fails on an estimate
        return None


def _tokenizer(cfg: RunConfig):
    if cfg.model.path is None:
        from r1lab.models.tiny import build_char_tokenizer

        return build_char_tokenizer()
    if (Path(cfg.model.path) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.model.path)
    return None


def model_shape(cfg: RunConfig) -> dict[str, Any] | None:
    """Layers, widths and parameter count from model.path's config.json or the tiny config."""
    if cfg.model.path is None:
        t = cfg.model.tiny
        from r1lab.models.tiny import build_char_tokenizer

        shape = {"source": "model.tiny", "hidden": t.hidden_size, "layers": t.num_layers,
                 "heads": t.num_heads, "kv_heads": t.num_kv_heads, "intermediate": t.intermediate_size,
                 "vocab": len(build_char_tokenizer()), "tied": True}
    else:
        path = Path(cfg.model.path) / "config.json"
        if not path.is_file():
            return None
        c = json.loads(path.read_text())
        c = c.get("text_config", c)
        heads = c.get("num_attention_heads", 1)
        shape = {"source": str(path), "hidden": c["hidden_size"], "layers": c["num_hidden_layers"],
                 "heads": heads, "kv_heads": c.get("num_key_value_heads", heads),
                 "intermediate": c.get("intermediate_size", 4 * c["hidden_size"]),
                 "vocab": c["vocab_size"], "tied": bool(c.get("tie_word_embeddings", False))}
    shape["params"] = llama_params(**{k: shape[k] for k in
                                      ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "tied")})
    return shape


def llama_params(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                 vocab: int, tied: bool) -> int:
    """Parameters of a Llama-family decoder (no biases): embeddings, attention, SwiGLU, norms.

    >>> llama_params(128, 4, 4, 4, 256, 103, True)   # the demo's tiny model (0.67M)
    669696
    """
    kv = hidden // heads * kv_heads
    layer = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * layer + hidden


def memory(cfg: RunConfig, shape: dict[str, Any], batch: dict[str, Any], nproc: int,
           command: str) -> dict[str, float]:
    """Bytes per process, by part. Sharded strategies (fsdp2, deepspeed) divide weights,
    gradients and optimiser state by the world size; LoRA trains only the adapter."""
    b = _BYTES[cfg.model.dtype]
    P = shape["params"]
    shard = nproc if cfg.train.strategy in ("fsdp2", "deepspeed") and nproc > 1 else 1
    trained = P
    if cfg.model.lora is not None:
        lo = cfg.model.lora
        h, L = shape["hidden"], shape["layers"]
        trained = L * len(lo.target_modules) * lo.r * 2 * h  # ~ r x (in + out) per adapted matrix
    out = {"weights": P * b / shard, "gradients": trained * b / shard,
           "optimizer_state": 2 * trained * b / shard}  # AdamW: exp_avg + exp_avg_sq, param dtype
    if command == "grpo":
        seq = (batch.get("prompt_tokens_max") or 0) + cfg.rollout.max_new_tokens
        mb = min(cfg.train.micro_batch_size, batch["completions_per_optimizer_step_per_process"])
        rows_rank = batch["completions_per_rollout_per_process"]
        kv_dim = shape["hidden"] // shape["heads"] * shape["kv_heads"]
        out["kv_cache"] = rows_rank * seq * shape["layers"] * 2 * kv_dim * b
    else:
        seq = batch.get("row_tokens_max")
        if seq is None:
            return out  # no rows to measure: weights, gradients and optimiser state only
        mb = batch["rows_per_optimizer_step_per_process"]
    per_layer = seq * mb * shape["hidden"] * 34 + 5 * shape["heads"] * seq * seq * mb
    act = shape["layers"] * per_layer * b / 2
    if cfg.train.gradient_checkpointing:
        act = shape["layers"] * seq * mb * shape["hidden"] * b + per_layer * b / 2
    out["activations"] = act + mb * seq * shape["vocab"] * 4  # + float32 logits
    if command == "grpo" and cfg.algorithm.beta > 0 and cfg.model.lora is None:
        out["reference_weights"] = P * b
    if command == "grpo" and cfg.critic is not None:
        out["critic"] = 4 * P * b / shard  # weights + grads + 2 Adam states
    return out


def no_effect(cfg: RunConfig, batch: dict[str, Any], command: str) -> list[str]:
    """Settings this combination ignores (only the ones the config sets, or that differ from
    their default), each with the reason."""
    alg, out = cfg.algorithm, []

    def touched(section: Any, key: str) -> bool:
        return key in section.model_fields_set or getattr(section, key) != type(section).model_fields[key].default

    if command == "sft":
        for sec in ("rollout", "rewards", "algorithm", "critic"):
            if getattr(cfg, sec) is not None and getattr(cfg, sec).model_fields_set:
                out.append(f"{sec}.*: `train sft` trains on the data's completions; it samples nothing")
        return out
    steps = batch["optimizer_steps_per_rollout"]
    if alg.beta == 0:
        for key in ("kl_estimator", "kl_in_reward", "kl_clamp", "kl_bias_correction"):
            if hasattr(alg, key) and touched(alg, key):
                out.append(f"algorithm.{key}: algorithm.beta is 0, so there is no KL term "
                           "(and no reference model)")
    if alg.mini_batch_size is not None and alg.mini_batch_size >= batch["completions_per_rollout"]:
        out.append(f"algorithm.mini_batch_size={alg.mini_batch_size}: >= the "
                   f"{batch['completions_per_rollout']} completions of a rollout batch, so one "
                   "optimiser step takes them all (as when unset)")
    if steps == 1:
        for key in ("eps_low", "eps_high", "dual_clip_c", "clip_delta"):
            if hasattr(alg, key) and touched(alg, key) and getattr(alg, key) is not None:
                out.append(f"algorithm.{key}: one optimiser step per rollout batch, so the "
                           "policy ratio is exactly 1 and the clip never acts")
    if not alg.dynamic_sampling:
        for key in ("max_refill_rounds", "dynamic_sampling_metric"):
            if touched(alg, key):
                out.append(f"algorithm.{key}: algorithm.dynamic_sampling is off")
    if cfg.rollout.temperature == 0:
        for key in ("top_p", "top_k"):
            if touched(cfg.rollout, key):
                out.append(f"rollout.{key}: rollout.temperature 0 decodes greedily")
    if cfg.train.micro_batch_size > batch["completions_per_optimizer_step_per_process"] and \
            touched(cfg.train, "micro_batch_size"):
        out.append(f"train.micro_batch_size={cfg.train.micro_batch_size}: above the "
                   f"{batch['completions_per_optimizer_step_per_process']} completions a process "
                   "has per optimiser step (one micro-batch)")
    if cfg.train.save_every >= cfg.train.steps:
        out.append(f"train.save_every={cfg.train.save_every}: >= train.steps, so only the final checkpoint")
    if cfg.train.offload and cfg.train.strategy != "fsdp2":
        out.append("train.offload: only fsdp2 offloads")
    if all(t >= 1.0 for t in cfg.eval.temperatures) and touched(cfg.eval, "top_p"):
        out.append("eval.top_p: applies to temperatures below 1.0 only, and there are none")
    if cfg.critic is None and alg.advantage == "gae":
        out.append("algorithm.advantage=gae needs a critic: section")
    return out


def build_plan(cfg: RunConfig, command: str = "grpo", nproc: int = 1) -> Plan:
    """The plan of `r1lab train <command>` for `cfg` on `nproc` processes (no model loaded)."""
    if nproc < 1:
        raise ValueError(f"--nproc: must be >= 1 (got {nproc})")
    plan = Plan(command=command, nproc=nproc)
    plan.batch = rl_batch(cfg, nproc) if command == "grpo" else sft_batch(cfg, nproc)
    if command == "grpo":
        from r1lab.algorithms.options import resolve_algorithm

        alg = resolve_algorithm(cfg.algorithm, cfg.critic)
        for chosen in (alg.advantage, alg.loss, alg.aggregation, alg.kl):
            if chosen is not None:
                plan.functions.append((chosen.kind, chosen.name, dict(chosen.options)))
        for comp in cfg.rewards.components:
            plan.functions.append(("reward", comp.name, {"weight": comp.weight, **comp.kwargs}))
        plan.functions.append(("rollout engine", cfg.rollout.engine,
                               {"temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
                                "top_k": cfg.rollout.top_k, "max_new_tokens": cfg.rollout.max_new_tokens}))
        if alg.kl is None:
            plan.reference = "no reference model (algorithm.beta = 0)"
        elif cfg.model.lora is not None:
            plan.reference = "reference = the base with the LoRA adapter disabled (no second copy)"
        else:
            plan.reference = f"a frozen reference copy of the policy is loaded (algorithm.beta = {cfg.algorithm.beta})"
        plan.functions.append(("critic", "value head on a policy copy" if cfg.critic else "none", {}))
    plan.functions.append(("template", cfg.data.template, {}))
    shape = model_shape(cfg)
    if shape is None:
        plan.notes.append(f"model.path {cfg.model.path}: no config.json there (yet); no memory estimate")
    else:
        plan.model = shape
        plan.memory = memory(cfg, shape, plan.batch, nproc, command)
    plan.no_effect = no_effect(cfg, plan.batch, command)
    return plan


def _gib(n: float) -> str:
    """Bytes in GiB or MiB.

    >>> _gib(3 * 2**30), _gib(5 * 2**20)
    ('3.00 GiB', '5.0 MiB')
    """
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def render(plan: Plan, cfg: RunConfig) -> list[Any]:
    """Rich renderables of the plan, for the console."""
    from rich.table import Table

    out: list[Any] = []
    t = Table(title=f"r1lab train {plan.command}: batch per optimiser step ({plan.nproc} process"
                    f"{'es' if plan.nproc > 1 else ''})", min_width=70)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for k, v in plan.batch.items():
        t.add_row(k.replace("_", " "), "unknown" if v is None else str(v))
    out.append(t)
    if plan.functions:
        f = Table(title="chosen functions (registered) and their resolved options", min_width=70)
        for col in ("kind", "name", "options"):
            f.add_column(col)
        for kind, name, opts in plan.functions:
            f.add_row(kind, name, ", ".join(f"{k}={v}" for k, v in opts.items()) or "-")
        out.append(f)
    if plan.reference:
        out.append(f"[bold]reference:[/] {plan.reference}")
    if plan.memory:
        m = plan.model
        mem = Table(title=f"memory per process (estimate): {m['params'] / 1e6:.2f}M parameters, "
                          f"{cfg.model.dtype}, strategy {cfg.train.strategy}", min_width=70)
        mem.add_column("part")
        mem.add_column("bytes", justify="right")
        for k, v in plan.memory.items():
            mem.add_row(k.replace("_", " "), _gib(v))
        mem.add_row("[bold]total", f"[bold]{_gib(sum(plan.memory.values()))}")
        out.append(mem)
    out.append("[bold]settings with no effect here:[/] " + ("none" if not plan.no_effect else ""))
    out += [f"  - {x}" for x in plan.no_effect]
    out += [f"[yellow]note:[/] {x}" for x in plan.notes]
    return out


def world_size(nproc: int | None) -> int:
    """--nproc, else the launcher's WORLD_SIZE, else 1."""
    import os

    if nproc is not None:
        return nproc
    return int(os.environ.get("WORLD_SIZE", "1"))


def plan_total(plan: Plan) -> float:
    return math.fsum(plan.memory.values())
