"""Pieces shared by the training loops: sequence assembly, token logprobs, logging, seeding."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from r1lab.r1_format import parse_r1
from r1lab.tensors import left_pad


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
    n = completion_ids.shape[0] // len(prompt_ids)
    ids, mask, _ = left_pad(prompt_ids, pad_id, completion_ids.device)  # [P, L]
    ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # [N, L]
    input_ids = torch.cat([ids, completion_ids], 1)  # [N, L+T]
    attn = torch.cat([mask, completion_mask.long()], 1)  # [N, L+T]
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attn, pos, ids.shape[1]


#: float32 logits elements held at once when turning logits into logprobs (256 MiB)
LOGPROB_CHUNK_ELEMENTS = 1 << 26


def completion_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
    prompt_len: int, temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probabilities of the completion tokens (positions >= prompt_len). -> [N, T]

    The batch is cut to its own extent first: leading columns that are padding in every row and
    trailing completion columns past the longest completion, so a micro-batch of short
    completions costs what its tokens cost (those positions get logprob 0). Only the completion
    positions' logits are computed, and the log-softmax is taken over chunks of rows
    (gather - logsumexp), so no full-vocabulary float32 log-probability tensor of the whole
    batch exists at once.
    """
    N, width = input_ids.shape
    T = width - prompt_len
    out_logp = torch.zeros((N, T), device=input_ids.device)
    comp_len = int(attention_mask[:, prompt_len:].sum(-1).max()) if T and N else 0
    if comp_len == 0:
        return out_logp
    used = attention_mask[:, :prompt_len].any(0)  # [L]: prompt columns someone uses
    start = min(int(used.float().argmax()) if bool(used.any()) else 0, max(prompt_len - 1, 0))
    end = prompt_len + comp_len
    logits = model(input_ids=input_ids[:, start:end], attention_mask=attention_mask[:, start:end],
                   position_ids=position_ids[:, start:end], logits_to_keep=comp_len + 1,
                   use_cache=False).logits[:, :-1]  # [N, comp_len, V]: position t predicts t+1
    targets = input_ids[:, prompt_len:end]  # [N, comp_len]
    rows = max(1, LOGPROB_CHUNK_ELEMENTS // max(1, comp_len * logits.shape[-1]))
    parts = []
    for i in range(0, N, rows):
        lg = logits[i:i + rows].float()  # [r, comp_len, V]
        if temperature not in (0, 1):
            lg = lg / temperature
        parts.append(lg.gather(-1, targets[i:i + rows, :, None]).squeeze(-1) - lg.logsumexp(-1))
    logp = parts[0] if len(parts) == 1 else torch.cat(parts)  # [N, comp_len]
    if comp_len == T:
        return logp
    return torch.cat([logp, out_logp[:, comp_len:]], 1)  # [N, T]


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
    """A completion 'thinks' when it holds a closed, non-empty think block (`parse_r1`)."""
    return parse_r1(text).thinks
