"""Load the policy (and, only when a KL term is active, a frozen reference) from config.

Precision: `model.dtype: float32` (the CPU default) trains fp32 weights. `bfloat16` / `float16`
with `model.mixed_precision` (the default) keep fp32 master weights, which the optimiser
updates, and run the forward and backward under `torch.autocast` in that dtype (`autocast`);
with `mixed_precision: false` the weights themselves are stored in that dtype, and an update
below half a unit in the last place of a weight is rounded away (bf16 has 8 bits of mantissa:
at lr 3e-6 almost every AdamW update is lost).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from r1lab.config import ModelConfig, RunConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: a model directory needs one of these to have a tokenizer (else transformers builds a 1-token one)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def weight_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype the weights are stored (and updated) in: fp32 under mixed precision.

    >>> weight_dtype(ModelConfig(dtype="bfloat16")), weight_dtype(ModelConfig(dtype="bfloat16", mixed_precision=False))
    (torch.float32, torch.bfloat16)
    """
    return torch.float32 if cfg.mixed_precision else DTYPES[cfg.dtype]


def compute_dtype(cfg: ModelConfig) -> torch.dtype | None:
    """The autocast dtype of the forward/backward, or None (compute in the weights' dtype).

    >>> compute_dtype(ModelConfig(dtype="bfloat16")), compute_dtype(ModelConfig())
    (torch.bfloat16, None)
    """
    if cfg.dtype == "float32" or not cfg.mixed_precision:
        return None
    return DTYPES[cfg.dtype]


def rollout_dtype(cfg) -> str | None:
    """The dtype name a run's sampler decodes in (`rollout.dtype`; auto = the training
    forward's compute dtype under mixed precision), or None for the weights' own.

    >>> from r1lab.config import RunConfig
    >>> rollout_dtype(RunConfig()), rollout_dtype(RunConfig.model_validate({"model": {"dtype": "bfloat16"}}))
    (None, 'bfloat16')
    """
    want = cfg.rollout.dtype
    if want == "auto":
        dtype = compute_dtype(cfg.model)
        return None if dtype is None else str(dtype).removeprefix("torch.")
    return None if DTYPES[want] == weight_dtype(cfg.model) else want


def autocast(cfg: ModelConfig, device: torch.device | str):
    """Context for a training forward: autocast in `compute_dtype(cfg)`, or nothing."""
    return precision(compute_dtype(cfg), device)


def precision(dtype: torch.dtype | None, device: torch.device | str):
    """`torch.autocast` in `dtype` on `device`'s type, or nothing for None. The training
    forwards (GRPO's `Forward`, SFT) run under it; the backward runs outside, as autocast
    wants (its ops take the dtypes the forward recorded)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def load_policy(cfg: ModelConfig | RunConfig, seed: int = 0):
    """(model, tokenizer): from `cfg.path` (a local HF directory) or built tiny from scratch,
    weights in `weight_dtype(cfg)`, with a fresh LoRA adapter when `cfg.lora` is set.

    Given the whole `RunConfig`, the ops backend is chosen first (`r1lab.models.backend.resolve`:
    applied process-wide, written back into `cfg.backend`); given only its `model` section, the
    backend stays as it is (each part's fixed default rule)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(cfg, RunConfig):
        from r1lab.models.backend import resolve

        resolve(cfg)
        cfg = cfg.model
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if cfg.path is not None:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path {path} is not a Hugging Face model directory (no config.json); "
                "r1lab loads models from local paths only"
            )
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"model.path {path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
                "save the tokenizer beside the weights: tokenizer.save_pretrained(path)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if len(tokenizer) < 2:
            raise FileNotFoundError(f"model.path {path}: its tokenizer files give a tokenizer of "
                                    f"{len(tokenizer)} token(s), not a usable one")
        quant = None
        if cfg.lora is not None:
            from r1lab.models.lora import quantization_config

            quant = quantization_config(cfg.lora)
        extra = {"quantization_config": quant, "device_map": {"": device}} if quant else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=weight_dtype(cfg), **extra)
    else:
        from r1lab.models.tiny import build_char_tokenizer, build_tiny_model

        if cfg.lora is not None and cfg.lora.load_in_4bit:
            raise ValueError("model.lora.load_in_4bit needs model.path (a model to quantise)")
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(cfg.tiny, tokenizer, seed=seed).to(weight_dtype(cfg))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not getattr(model, "is_quantized", False):
        model = model.to(device)
    if cfg.lora is not None:
        from r1lab.models.lora import apply_lora

        model = apply_lora(model, cfg.lora)
    return model, tokenizer


def load_reference(policy) -> torch.nn.Module:
    """A frozen copy of the policy's current weights (call before the first update); for a
    LoRA policy, the policy itself with the adapter disabled (no copy)."""
    from r1lab.models.lora import AdapterDisabled, is_lora

    if is_lora(policy):
        return AdapterDisabled(policy)
    ref = copy.deepcopy(policy)
    ref.eval()
    ref.requires_grad_(False)
    return ref
