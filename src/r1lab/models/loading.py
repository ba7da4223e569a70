"""Load the policy (and, only when a KL term is active, a frozen reference) from config."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from r1lab.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_policy(cfg: ModelConfig, seed: int = 0):
    """(model, tokenizer): from `cfg.path` (a local HF directory) or built tiny from scratch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype])
    else:
        from r1lab.models.tiny import build_char_tokenizer, build_tiny_model

        tokenizer = build_char_tokenizer()
        model = build_tiny_model(cfg.tiny, tokenizer, seed=seed).to(DTYPES[cfg.dtype])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device), tokenizer


def load_reference(policy) -> torch.nn.Module:
    """A frozen copy of the policy's current weights (call before the first update)."""
    ref = copy.deepcopy(policy)
    ref.eval()
    ref.requires_grad_(False)
    return ref
