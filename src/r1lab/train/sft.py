"""Supervised fine-tuning on (prompt, completion) pairs: the one SFT loop of r1lab.

Used for the demo's base pre-training, R1's cold start, the SFT after rejection sampling and
distillation students. The loss is next-token cross-entropy on completion tokens only (the
prompt is context), averaged over the completion tokens of the batch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from r1lab.models.loading import precision
from r1lab.train.common import JsonlWriter
from r1lab.train.packed import PackedBatch, packed_logprobs, packed_support


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (prompt, completion); the completion ends with eos."""
    eos = tokenizer.eos_token_id
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
    comps = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    return [(p, c + [eos]) for p, c in zip(prompts, comps)]


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (-100 on prompt and padding)."""
    width = max(len(p) + len(c) for p, c in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(batch):
        seq = torch.tensor(p + c)
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(c)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def train_sft(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    warmup_steps: int = 20,
    grad_clip: float = 1.0,
    seed: int = 0,
    log_path: str | Path | None = None,
    progress: bool = True,
    description: str = "sft",
    packed: bool = True,
    logger=None,
    autocast: torch.dtype | None = None,
) -> list[float]:
    """Train `model` in place for `steps` optimiser steps; returns the loss of each step.

    `packed`: Llama-family models run `r1lab.train.packed` (no padding in the matmuls; a batch
    mixing short and long examples costs what its tokens cost); others, or False, the padded
    Hugging Face forward. Both give the same loss.

    `autocast`: mixed precision, the forward under `torch.autocast` in this dtype (weights stay
    as they are, fp32 masters; `r1lab.models.loading.compute_dtype`).

    `logger` (a `r1lab.tracking.RunLogger`) gets each step's record instead of `log_path`
    (metrics.jsonl, trackers, health checks); when it sets `stop_reason` (an alarm of
    `log.stop_on`), training stops after that step."""
    from r1lab.train.progress import StepProgress

    encoded = encode_pairs(tokenizer, pairs)
    rng = random.Random(seed)
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warmup_cosine(s, warmup_steps, steps))
    log = JsonlWriter(log_path) if log_path else None
    losses: list[float] = []
    model.train()
    longest = max(len(p) + len(c) for p, c in encoded)
    packed = packed and packed_support(model, longest) is None and all(p for p, _ in encoded)
    with StepProgress(description, steps, enabled=progress) as bar:
        for step in range(steps):
            t0 = time.perf_counter()
            if len(order) < batch_size:  # reshuffle each epoch
                fresh = list(range(len(encoded)))
                rng.shuffle(fresh)
                order += fresh
            batch = [encoded[i] for i in order[:batch_size]]
            del order[:batch_size]
            with precision(autocast, model.device):
                loss = _loss(model, batch, tokenizer.pad_token_id, packed)  # mean over completion tokens
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            record = {"step": step + 1, "loss": losses[-1], "grad_norm": grad_norm.item(),
                      "lr": sched.get_last_lr()[0], "step_s": time.perf_counter() - t0}
            if logger is not None:
                logger.log_metrics(record)
            elif log:
                log.write(record)
            bar.update(loss=f"{losses[-1]:.3f}")
            if logger is not None and logger.stop_reason:
                break
    if log:
        log.close()
    model.eval()
    return losses


def _loss(model, batch: list[tuple[list[int], list[int]]], pad_id: int, packed: bool) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens of the batch."""
    if not packed:
        return model(**collate(batch, pad_id, model.device), use_cache=False).loss
    pb = PackedBatch.from_pairs(batch, model.device)
    logp, _ = packed_logprobs(model, pb)  # [B, T], 0 on padding
    return -logp.sum() / sum(len(c) for _, c in batch)


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
