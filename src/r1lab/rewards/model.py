"""A learned reward: a Hugging Face sequence-classification model loaded from a local path.

Used for the helpfulness/harmlessness part of R1's last stage. The model is loaded once per
path and kept; nothing is downloaded (`local_files_only`).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from r1lab.rewards.base import REWARDS, Score

_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def load_reward_model(path: str, device: str = "cpu") -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    return tokenizer, model.to(device).eval()


@REWARDS.register("reward_model")
def reward_model(
    completion: str,
    row: dict,
    path: str = "",
    label: int = 0,
    prompt_key: str = "prompt",
    max_length: int = 2048,
    device: str = "cpu",
    **_: Any,
) -> Score:
    """The model's logit `label` for `row[prompt_key] + completion` (thinking included as is)."""
    import torch

    if not path:
        raise ValueError("reward_model needs kwargs.path: a local sequence-classification model")
    tokenizer, model = load_reward_model(path, device)
    text = str(row.get(prompt_key, "")) + completion
    batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
    with _lock, torch.no_grad():  # one forward at a time: torch already uses every core
        logits = model(**batch.to(device)).logits  # [1, num_labels]
    return Score(float(logits[0, label]))
