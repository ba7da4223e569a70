"""LoRA / QLoRA through peft (`model.lora`, extra `r1lab[lora]`).

Only the adapter trains; the base weights stay frozen. Three things follow from that, and this
module does them:

- the reference policy of the KL term is the base itself, so no second copy is loaded:
  `AdapterDisabled(policy)` is a module that runs the policy's forward with the adapter turned
  off (`peft`'s `disable_adapter()`), holding no weights of its own;
- a checkpoint is the *merged* model, W + (alpha / r) B A per adapted linear, computed without
  touching the live adapter (no merge/unmerge round trip, whose float error would drift the
  weights), saved as a plain transformers directory, plus the adapter alone in `adapter/` so a
  run can resume training it;
- the samplers that read weights directly (the native decoder, the packed forward) refuse
  LoRA-wrapped linears (`r1lab.models.ops.llama_support`: "not a plain nn.Linear"), so rollouts
  and log-probs go through the Hugging Face forward, where the adapter is applied.

QLoRA (`load_in_4bit`): the frozen base is loaded in 4-bit NF4 by bitsandbytes (CUDA only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from r1lab.config import LoraConfig

ADAPTER_DIR = "adapter"
INSTALL_HINT = "model.lora needs peft, which is not installed: pip install 'r1lab[lora]'"


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from exc
    return peft


def is_lora(model: nn.Module) -> bool:
    """Whether `model` is a peft model carrying a LoRA adapter."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """`model` with a fresh LoRA adapter on `cfg.target_modules` (B = 0: the policy starts as
    the base); only the adapter's weights require grad."""
    peft = _peft()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(cfg.target_modules) - names)
    if missing:
        raise ValueError(f"model.lora.target_modules: {', '.join(missing)} not in the model "
                         f"(its linears: {', '.join(sorted(names))})")
    pcfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    if cfg.load_in_4bit:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return peft.get_peft_model(model, pcfg)


def quantization_config(cfg: LoraConfig) -> Any:
    """`from_pretrained(quantization_config=...)` for QLoRA's 4-bit NF4 base, or None."""
    if not cfg.load_in_4bit:
        return None
    if not torch.cuda.is_available():
        raise ValueError("model.lora.load_in_4bit: 4-bit bases (bitsandbytes) need a CUDA GPU")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)


class AdapterDisabled(nn.Module):
    """The reference policy of a LoRA run: the policy's own forward with the adapter off.

    It owns no parameters (the policy is held outside the module tree), so `parameters()` is
    empty and nothing is copied."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "policy", policy)  # not a submodule: no weights of its own
        self.config = policy.config

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)


def merged_state_dict(model: nn.Module, merge: bool = True) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter merged in (W + scaling * B @ A), under
    the base model's own key names; the live model is not changed. `merge=False`: the frozen
    base weights alone."""
    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules() if merge else ():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    delta = module.get_delta_weight(adapter).detach()  # [out, in]
                    deltas[name] = deltas.get(name, 0) + delta
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        owner = key.rsplit(".base_layer.", 1)[0] if ".base_layer." in key else None
        if owner in deltas and key.endswith(".weight"):
            value = value + deltas[owner].to(value.dtype)
        out[plain] = value.detach().cpu().clone()
    return out


def save_merged(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Write the merged weights as a plain transformers directory at `path` (loads with
    `AutoModelForCausalLM.from_pretrained`), and the adapter alone in `path/adapter`."""
    path = Path(path)
    save_plain(model, merged_state_dict(model), path)
    model.save_pretrained(path / ADAPTER_DIR)  # peft: adapter_config.json + adapter weights
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def save_plain(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write `state` (plain key names) as a transformers directory of `model`'s architecture
    (a peft model's base architecture), without building a second copy of the weights."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if is_lora(model) else model
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(base.config)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_weights()
    plain.generation_config = base.generation_config
    plain.save_pretrained(path)
    return path


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load the adapter weights saved by `save_merged` into `model` (to resume a LoRA run)."""
    peft = _peft()
    from safetensors.torch import load_file

    file = Path(path) / ADAPTER_DIR / "adapter_model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no LoRA adapter in this checkpoint")
    result = peft.set_peft_model_state_dict(model, load_file(str(file)))
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{file}: adapter keys the model does not have: {result.unexpected_keys[:3]}")
