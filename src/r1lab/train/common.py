"""Pieces shared by the training loops: sequence assembly, token logprobs, logging, seeding."""

from __future__ import annotations

import inspect
import os
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic on GPU (no effect on CPU)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def join_prompt_completion(
    prompt_ids: list[list[int]], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts followed by right-padded completions, one row per completion.

    prompt_ids: P lists; completion_ids/mask: [N, T] with N = P * n.
    Returns input_ids [N, L+T], attention_mask [N, L+T], position_ids [N, L+T], L.
    """
    from r1lab.rollout.hf import left_pad

    n = completion_ids.shape[0] // len(prompt_ids)
    ids, mask, _ = left_pad(prompt_ids, pad_id, completion_ids.device)  # [P, L]
    ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # [N, L]
    input_ids = torch.cat([ids, completion_ids], 1)  # [N, L+T]
    attn = torch.cat([mask, completion_mask.long()], 1)  # [N, L+T]
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attn, pos, ids.shape[1]


def completion_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
    prompt_len: int, temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probabilities of the completion tokens (positions >= prompt_len). -> [N, T]

    Only the last T+1 positions' logits are computed, and log-softmax is taken row by row
    (logsumexp + gather), so the full [N, T, V] log-probability tensor never exists at once.
    """
    T = input_ids.shape[1] - prompt_len
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=T + 1, use_cache=False)
    logits = out.logits[:, :-1]  # [N, T, V]: position t predicts token t+1
    if temperature not in (0, 1):
        logits = logits / temperature
    targets = input_ids[:, prompt_len:]  # [N, T]
    rows = []
    for lg, tg in zip(logits, targets):  # per row keeps the float32 copy to [T, V]
        lg = lg.float()
        rows.append(lg.gather(-1, tg[:, None]).squeeze(-1) - torch.logsumexp(lg, -1))
    return torch.stack(rows)  # [N, T]


def call_with(fn: Callable, options: dict[str, Any], **fixed: Any) -> Any:
    """Call a registered component with the config options its signature names.

    Registered functions share one positional signature per kind; their keyword constants differ
    (`eps_low` for a clipped loss, `gamma` for GAE). The config holds them all, typed; each
    function receives the ones it declares.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(**fixed, **options)
    return fn(**fixed, **{k: v for k, v in options.items() if k in params})


class JsonlWriter:
    """Append-only jsonl log (metrics.jsonl, samples.jsonl), flushed every line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, default=_jsonable) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def thinks(text: str) -> bool:
    """A completion 'thinks' when it holds a non-empty <think>...</think> block."""
    start = text.find("<think>")
    end = text.find("</think>", start + 7)
    return start >= 0 and end > start + 7 and bool(text[start + 7 : end].strip())
