"""Typed run configuration: one pydantic model per section, two levels deep, validated up front.

A config is a YAML file whose top-level keys are the sections below. Every section forbids
unknown keys, so a typo fails before any work starts and the error names the dotted key:

>>> RunConfig.model_validate({"rollout": {"group_sise": 8}})
Traceback (most recent call last):
...
r1lab.config.ConfigError: rollout.group_sise: unknown key (valid: engine, group_size, max_new_tokens, ...)

Command-line overrides are dotted `section.key=value` strings whose values are parsed as YAML
(`--set rollout.group_size=16 --set optim.lr=3e-4`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Section):
    """A small Llama built from scratch with a character-level tokenizer (the demo's model)."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(256, gt=0)
    max_position_embeddings: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


class LoraConfig(Section):
    """`model.lora`: train a LoRA adapter (peft, extra `r1lab[lora]`) over frozen base weights;
    the reference policy is the base with the adapter disabled, and the checkpoints are the
    merged weights (plain transformers directories)."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"])
    load_in_4bit: bool = Field(False, description="QLoRA: the frozen base in 4-bit NF4 "
                               "(bitsandbytes, CUDA only)")


class ModelConfig(Section):
    """The policy: a local Hugging Face causal-LM directory, or a tiny model built from scratch."""

    path: str | None = None
    tiny: TinyModelConfig | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: all cores")
    mixed_precision: bool = Field(
        True, description="dtype bfloat16/float16: fp32 master weights, forward/backward under "
        "autocast in dtype; false stores the weights themselves in dtype (updates below its "
        "resolution are lost)")
    lora: LoraConfig | None = Field(None, description="train a LoRA adapter instead of every weight")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.path is None and self.tiny is None:
            self.tiny = TinyModelConfig()
        return self


class DataConfig(Section):
    """Prompts. `source` is `synthetic:<task>` or a path to a jsonl/json/parquet file or HF dataset dir."""

    source: str = "synthetic:addition"
    template: str = "auto"  # chat with a chat template, tiny for the demo tokenizer, else r1_zero
    prompt_field: str = "question"
    answer_field: str = "answer"
    format: Literal["auto", "fields", "gsm8k", "math", "aime", "gpqa", "humaneval", "mbpp", "stdio",
                    "messages"] = Field(
        "auto", description="how file rows become prompt/answer/tests (r1lab.data.formats); auto = "
        "detected from the columns, logged")
    eval_source: str | None = Field(
        None, description="held-out rows for eval.every and the final evaluation of file data "
        "(a file, or a datasets dir with @split)")
    eval_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="without eval_source: this share of the file's rows "
        "(seeded by data.seed) is held out instead of trained on")
    train_size: int = Field(4000, gt=0)
    heldout_size: int = Field(200, gt=0)
    min_digits: int = Field(2, gt=0)
    max_digits: int = Field(3, gt=0)
    seed: int = 1234

    @model_validator(mode="after")
    def _digits(self) -> DataConfig:
        if self.min_digits > self.max_digits:
            raise ValueError("min_digits must be <= max_digits")
        return self


class RolloutConfig(Section):
    engine: str = "hf"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the dtype the native sampler decodes in (weights cast once per "
        "generate call): auto = the training forward's (bfloat16 under `model.dtype: bfloat16` "
        "mixed precision, as a vLLM engine samples; else the weights' own)")
    group_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    probe_completions: int = Field(
        4, ge=0, description="after every weight sync, the trainer re-scores this many sampled "
        "completions: rollout/mismatch_kl against the engine's log-probs; 0 = off")
    probe_warn_kl: float = Field(1e-3, gt=0, description="rollout/mismatch_kl that warns loudly")
    correction: str = Field("none", description="importance weights for the rollout-trainer "
                            "mismatch (r1lab.algorithms.mismatch): none, tis, mis")
    correction_cap: float = Field(2.0, gt=0, description="tis: the cap; mis: the mask threshold")


class RewardComponent(Section):
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RewardsConfig(Section):
    components: list[RewardComponent] = Field(
        default_factory=lambda: [
            RewardComponent(name="accuracy", weight=1.0),
            RewardComponent(name="format", weight=0.5),
        ]
    )
    workers: int = Field(1, ge=1)
    timeout_s: float = Field(10.0, gt=0)


class AlgorithmConfig(Section):
    """Which registered estimator / loss / aggregation / KL to use, and their constants."""

    advantage: str = "grpo"
    loss: str = "clip"
    aggregation: str = "token_mean"
    kl_estimator: str = "k3"
    beta: float = Field(0.0, ge=0.0, description="KL coefficient; 0 loads no reference model")
    kl_in_reward: bool = False
    eps_low: float = Field(0.2, ge=0.0)
    eps_high: float = Field(0.2, ge=0.0)
    dual_clip_c: float | None = Field(None, gt=1.0)
    clip_delta: float | None = Field(
        None, gt=1.0, description="TRL's two-sided clip `delta`: the loss `clip` caps the "
        "unclipped ratio at delta (INTELLECT-2; use > 1 + eps_high)")
    kl_clamp: float | None = Field(
        10.0, gt=0.0, description="k3 clamped to [-c, c] (verl's low_var_kl: 10); null = "
        "unclamped (TRL)")
    kl_bias_correction: bool = Field(
        False, description="k3 times the importance ratio pi/pi_old (TRL 1.16's default "
        "use_bias_correction_kl, DeepSeek-V3.2)")
    adv_eps: float = Field(1e-4, gt=0.0)
    adv_ddof: int = Field(1, ge=0)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, ge=1, description="passes over each batch of rollouts (mu)")
    mini_batch_size: int | None = Field(
        None, ge=1, description="completions per optimiser step; None = the whole batch")
    dynamic_sampling: bool = Field(False, description="DAPO: drop zero-signal groups, refill")
    max_refill_rounds: int = Field(3, ge=0, description="extra rollout rounds per step at most")
    dynamic_sampling_metric: str = Field(
        "accuracy", description="reward component whose all-equal groups dynamic sampling drops "
        "(DAPO: accuracy, so length shaping cannot keep an all-wrong group); the total reward "
        "when the run has no such component")
    mask_truncated: bool = Field(False, description="completions cut at max_new_tokens: no loss")

    @model_validator(mode="after")
    def _options_fit(self) -> AlgorithmConfig:
        """An option set here that the chosen function does not take is an error naming the key
        (`r1lab.algorithms.options`); unknown component names are left to `check_config`."""
        from r1lab.algorithms.options import KINDS, resolve_algorithm

        if all(getattr(self, key) in registry for registry, key in KINDS.values()):
            resolve_algorithm(self)
        return self


class CriticConfig(Section):
    """PPO's value model (a copy of the policy's backbone + a linear head) and GAE constants.

    Defaults are verl's (`critic.optim.lr`, `critic.cliprange_value`, `algorithm.gamma/lam`).
    """

    lr: float = Field(1e-5, gt=0)
    value_clip: float | None = Field(0.5, gt=0, description="PPO value clipping; None = off")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    whiten: bool = Field(True, description="whiten GAE advantages over the batch")


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)


class TrainConfig(Section):
    steps: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1, description="prompts per step; completions = batch_size * group_size")
    micro_batch_size: int = Field(64, ge=1, description="completions per forward/backward")
    micro_batch_tokens: int | None = Field(
        None, ge=1, description="also cut a micro-batch before its prompt + completion tokens "
        "pass this budget, so memory follows the tokens as completions grow; None = rows only")
    packed: bool = Field(
        True, description="packed forward for Llama-family models: each prompt once per group, "
        "no padding in the matmuls (others, or false, use the padded Hugging Face forward)")
    seed: int = 1
    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_last: int = Field(3, ge=1, description="checkpoints kept on disk (the newest ones)")
    max_consecutive_skips: int = Field(
        5, ge=1, description="stop after this many steps in a row skipped for a non-finite loss/gradient")
    deterministic: bool = Field(False, description="deterministic kernels: same seed, same weights")
    strategy: Literal["auto", "none", "ddp", "fsdp2", "deepspeed"] = Field(
        "auto", description="data parallelism under torchrun / accelerate launch: auto = none "
        "for one process, ddp for several, deepspeed / fsdp2 when accelerate's config names "
        "them (r1lab.train.distributed)")
    zero_stage: Literal[2, 3] | None = Field(
        None, description="deepspeed: ZeRO stage; None = accelerate's zero_stage, else the "
        "DeepSpeed config's, else 2")
    deepspeed_config: str | None = Field(
        None, description="deepspeed: a DeepSpeed JSON whose zero_optimization options are used "
        "(None = accelerate's deepspeed_config_file, if any)")
    offload: bool = Field(False, description="fsdp2: parameters, gradients and optimiser state "
                          "on CPU between uses")
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward")
    dist_timeout_s: float = Field(600.0, gt=0, description="how long a collective waits for "
                                  "a rank before the run fails")


class BackendConfig(Section):
    """Which implementation runs the model arithmetic (`r1lab.models.backend`), chosen once when
    the model loads and written back here as concrete values (so a run's config.yaml says what
    ran): `auto` resolves by fixed rules, never by timing. Environment overrides (`R1LAB_KERNELS`,
    `R1LAB_ONEDNN`, `R1LAB_ONEDNN_WGRAD`, `R1LAB_MALLOC_TUNING`) win over these and are recorded
    in `chosen_by`."""

    kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="the C kernels (CPU float32 attention, RMSNorm, SwiGLU, few-row "
        "decoding linears): auto = where they build and pass their probe; on = required")
    onednn: Literal["auto", "on", "off"] = Field(
        "auto", description="oneDNN linears on CPU float32: auto = where the probe passes; on = required")
    onednn_wgrad: Literal["auto", "mkl", "onednn", "tune"] = Field(
        "auto", description="training linears' weight gradient: auto = a fixed rule by CPU "
        "(oneDNN on AMD Zen 5+, else MKL); tune = time both once (recorded; not with "
        "train.deterministic)")
    malloc_tuning: Literal["auto", "on", "off"] = Field(
        "auto", description="keep freed memory in the process (glibc): auto = on for CPU models")
    chosen_by: dict[str, str] = Field(
        default_factory=dict, description="written by the run: how each value above was chosen")


class PretrainConfig(Section):
    """Next-token pre-training of the tiny base on a synthetic corpus (the demo's phase 1)."""

    steps: int = Field(500, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    corpus_size: int = Field(20000, gt=0)
    think_fraction: float = Field(0.5, ge=0.0, le=1.0)
    # habits of a noisy corpus (`r1lab.data.tasks.corpus_completion`; addition tasks only)
    slip_rate: float = Field(0.0, ge=0.0, le=1.0, description="a worked step's total written one off")
    hard_slip_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="slip rate of steps whose total is 13-17 (always one "
        "low: a habit); None = slip_rate")
    reflect_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="worked solutions that check each step and redo a slip")
    mix_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="worked solutions that switch to the second alphabet mid-way")


class SFTConfig(Section):
    """`r1lab train sft`: next-token cross-entropy on the completions of (prompt, completion)
    rows (R1's cold start, the SFT after rejection sampling, a distillation student). Prompts are
    `data.source` rows' `data.prompt_field` through `data.template`."""

    completion_field: str = "completion"
    steps: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)


class RejectConfig(Section):
    """`r1lab sample`: rejection sampling (R1 stage 3). Each prompt gets `samples_per_prompt`
    completions from the policy (`rollout.*` sampling settings); a completion is kept when every
    reward component named in `min_scores` reaches its threshold; at most `keep_per_prompt`
    distinct completions per prompt go to the SFT dataset."""

    samples_per_prompt: int = Field(4, ge=1)
    keep_per_prompt: int = Field(1, ge=1)
    min_scores: dict[str, float] = Field(default_factory=lambda: {"accuracy": 1.0})
    num_prompts: int | None = Field(None, ge=1, description="first N training prompts; None = all")
    batch_prompts: int = Field(16, ge=1, description="prompts per sampling call")


PIPELINE_STAGES = ("cold_start", "reasoning_rl", "rejection_sampling", "rejection_sft",
                   "all_scenario_rl")
DISTILL_STAGES = ("teacher_sampling", "student_sft")


class PipelineConfig(Section):
    """`r1lab pipeline r1`: DeepSeek-R1's four stages, each a run of its own command on the
    previous stage's checkpoint. Every section of this config applies to every stage; `overrides`
    changes it for one stage (dotted `section.key=value`, as `--set`)."""

    cold_start: str | None = Field(
        None, description="(prompt, completion) file for the cold-start SFT, or "
        "`synthetic:<task>[:N]` (N worked solutions of that task, default 256); None skips stage 1")
    rejection_sft_from: Literal["base", "rl"] = Field(
        "base", description="model the rejection-sampled data fine-tunes: the base (as R1 does "
        "with DeepSeek-V3-Base) or the reasoning-RL checkpoint")
    teacher: str | None = Field(
        None, description="`r1lab distill`: the teacher checkpoint (a local HF directory); "
        "`model` is the student")
    general_sft: str | None = Field(
        None, description="non-reasoning (prompt, completion) rows (writing, QA, role-play) mixed "
        "into the rejection-sampling SFT")
    general_sft_ratio: float = Field(
        1 / 3, ge=0.0, description="general rows per rejection-sampled row (R1: 200k to 600k)")
    overrides: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _stages(self) -> PipelineConfig:
        unknown = sorted(set(self.overrides) - set(PIPELINE_STAGES) - set(DISTILL_STAGES))
        if unknown:
            raise ValueError(f"overrides: unknown stage {', '.join(unknown)}; stages: "
                             f"{', '.join(PIPELINE_STAGES + DISTILL_STAGES)}")
        return self


class ScenarioConfig(Section):
    """`r1lab demo --scenario NAME`: which of the paper's findings the demo reproduces
    (`r1lab.pipeline.findings`); `r1zero` is the plain R1-Zero demo."""

    name: str = "r1zero"
    aha_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="reflection: the aha step is the first from which the "
        "per-step reflection rate stays at or above this")
    teacher_tiny: TinyModelConfig | None = Field(
        None, description="distillation: the teacher's size (`model.tiny` is the smaller student)")


class EvalConfig(Section):
    num_problems: int = Field(200, ge=1)
    k: int = Field(4, ge=1, description="samples per problem for pass@1 averaged over k")
    temperatures: list[float] = Field(default_factory=lambda: [0.6, 1.0])
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="top-p for temperatures below 1.0")
    greedy: bool = True
    every: int = Field(0, ge=0, description="evaluate during training every N steps; 0 = off")
    max_new_tokens: int | None = None
    benchmarks: list[str] = Field(
        default_factory=list, description="`r1lab eval`: benchmark files (any data.format), one "
        "table each; empty = the run's held-out rows (else its data rows)")
    contamination_ngram: int = Field(
        13, ge=1, description="word n-gram length of the training-vs-benchmark overlap check")


class LogConfig(Section):
    """Where metrics go (metrics.jsonl always; `report_to` trackers besides) and the run-health
    alarms over them (`r1lab.health`): thresholds, and which alarms stop the run (`stop_on`)."""

    samples_per_step: int = Field(4, ge=0)
    progress: bool = True
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = Field(
        default_factory=list, description="trackers fed the same records as metrics.jsonl "
        "(offline: TensorBoard event files, wandb offline mode, trackio local, mlflow file store)")
    project: str = Field("r1lab", description="tracker project / experiment name")
    run_name: str | None = Field(None, description="tracker run name; default: the run folder's name")
    alarms: bool = Field(True, description="run the health checks over the metrics stream")
    stop_on: list[str] = Field(
        default_factory=list, description="alarms that stop the run cleanly (checkpoint, exit); "
        "names from `r1lab.health.ALARMS`, or `all`")
    alarm_window: int = Field(5, ge=1, description="steps averaged by the alarms' checks")
    entropy_floor: float = Field(0.02, ge=0.0, description="entropy_collapse: nats/token below which "
                                 "the policy has (nearly) stopped exploring")
    entropy_drop: float = Field(0.05, ge=0.0, le=1.0, description="entropy_collapse: or below this "
                                "fraction of the first window's entropy")
    solved_accuracy: float = Field(0.9, ge=0.0, le=1.0, description="entropy_collapse: training "
                                   "accuracy at or above which low entropy is convergence, not collapse")
    truncation_max: float = Field(0.2, ge=0.0, le=1.0, description="length_blowup: share of "
                                  "completions cut at max_new_tokens")
    format_saturation: float = Field(0.9, ge=0.0, le=1.0, description="format_only: mean format "
                                     "reward (in [0, 1]) counted as saturated")
    accuracy_min_gain: float = Field(0.05, ge=0.0, description="format_only: accuracy gain below "
                                     "which accuracy is flat")
    heldout_drop: float = Field(0.05, ge=0.0, description="reward_hacking: fall of eval/pass1 from "
                                "its best while the training reward rose")
    reward_error_max: float = Field(0.03, ge=0.0, le=1.0, description="reward_errors: share of "
                                    "completions whose reward erred, timed out or found no program/test")
    zero_signal_max: float = Field(0.9, ge=0.0, le=1.0, description="zero_signal: share of groups "
                                   "whose rewards are all equal (no gradient)")
    mismatch_kl_max: float = Field(0.01, ge=0.0, description="rollout_mismatch: KL between the "
                                   "rollout engine's and the trainer's log-probs")

    @model_validator(mode="after")
    def _alarm_names(self) -> LogConfig:
        from r1lab.health import ALARMS

        unknown = [n for n in self.stop_on if n != "all" and n not in ALARMS]
        if unknown:
            raise ValueError(f"stop_on: unknown alarm {', '.join(unknown)}; valid: all, "
                             f"{', '.join(ALARMS.names())}")
        return self


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    critic: CriticConfig | None = Field(None, description="set to train PPO with a value model")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    reject: RejectConfig = Field(default_factory=RejectConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    scenario: ScenarioConfig = Field(default_factory=ScenarioConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _tie_lengths(self) -> RunConfig:
        """Length rewards' max_length follows rollout.max_new_tokens unless set (rewards.length)."""
        from r1lab.rewards.length import tie_lengths

        tie_lengths(self)
        return self

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> RunConfig:  # type: ignore[override]
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, cls)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(exc: ValidationError, root: type[BaseModel]) -> str:
    """Turn pydantic's report into one line per problem, each led by the dotted key."""
    lines = []
    for err in exc.errors():
        key = ".".join(_shown(p) for p in err["loc"]) or "(top level)"
        option = (err.get("ctx") or {}).get("error")
        if err["type"] == "value_error" and hasattr(option, "key"):  # algorithms.OptionError
            lines.append(f"{'.'.join([*map(_shown, err['loc']), option.key])}: {option.message}")
        elif err["type"] == "extra_forbidden":
            valid = _valid_keys(root, err["loc"][:-1])
            shown = ", ".join(valid[:3]) + (", ..." if len(valid) > 3 else "")
            lines.append(f"{key}: unknown key (valid: {shown})")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _shown(part: Any) -> str:
    """A key as written, or quoted when it is empty or holds spaces, colons or control chars."""
    text = str(part)
    plain = text and text.isprintable() and not any(c.isspace() or c == ":" for c in text)
    return text if plain else repr(text)


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        if isinstance(part, int):  # an index into a list of sections (rewards.components.0)
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        nested = [a for a in inner if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `a.b=value` overrides (values parsed as YAML) to a raw config dict.

    >>> apply_overrides({"rollout": {"group_size": 8}}, ["rollout.group_size=16", "optim.lr=3e-4"])
    {'rollout': {'group_size': 16}, 'optim': {'lr': 0.0003}}
    """
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.key=value")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
        # YAML reads "3e-4" as a string; users mean a number
        if isinstance(parsed, str):
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        node[parts[-1]] = parsed
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults), apply overrides, validate. Errors name the key."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    return RunConfig.model_validate(raw)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml())
