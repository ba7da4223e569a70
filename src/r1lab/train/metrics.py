"""Stage 5 of the GRPO step: what the step logs, reduced over every rank.

The curves come from the first, unfiltered round of sampling (comparable with or without DAPO's
refills); the update's numbers from the batch it trained on. Per-completion quantities are
summed over ranks before they are divided, so N processes log what one process would.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from r1lab.algorithms import entropy_from_logits, masked_mean, zero_signal_groups
from r1lab.data.templates import prompt_of
from r1lab.r1_format import parse_r1
from r1lab.train.batch import Sampled, TokenBatch
from r1lab.train.distributed import World
from r1lab.train.sampling import Drawn

#: completions whose entropy is measured each step when the engine does not report it
ENTROPY_ROWS = 16


def rollout_metrics(s: Sampled, world: World) -> dict[str, float]:
    """Reward, its components, think rate, length, truncation and zero-signal share of `s`."""
    texts, rewards, G = s.rollout.texts, s.rewards.double(), s.rollout.n  # [N]
    comps = s.scored.components if s.scored is not None else {}
    local = [
        len(texts), rewards.sum().item(), rewards.square().sum().item(),
        sum(parse_r1(t).thinks for t in texts), s.rollout.lengths.double().sum().item(),
        sum(f == "length" for f in s.rollout.finish_reasons),
        zero_signal_groups(s.rewards, G).double().sum().item() / G, len(texts) / G,
        s.scored.errors if s.scored is not None else 0,
        *[sum(v) for v in comps.values()],
    ]
    n, r_sum, r_sq, thinking, length, cut, zero, groups, errors, *comp = world.sum(
        torch.tensor(local, dtype=torch.float64)).tolist()
    mean = r_sum / n
    out = {
        "reward": mean,
        "reward_std": math.sqrt(max(0.0, (r_sq - n * mean * mean) / (n - 1))) if n > 1 else 0.0,
        **{f"reward/{k}": v / n for k, v in zip(comps, comp)},
        "reward_errors": int(errors),
        "think_rate": thinking / n,
        "completion_len": length / n,
        "truncated_rate": cut / n,
        "zero_signal_groups": zero / groups,
    }
    if s.scored is not None and s.scored.metrics:  # the rewards' own rates, averaged over ranks
        names = list(s.scored.metrics)
        values = world.sum(torch.tensor([float(s.scored.metrics[k]) for k in names])) / world.size
        out.update({f"rewards/{k}": v for k, v in zip(names, values.tolist())})
    if "accuracy" in comps:
        out["accuracy"] = out["reward/accuracy"]
    return out


def policy_entropy(batch: Sampled, tokens: TokenBatch, model, temperature: float, world: World) -> float:
    """Mean entropy of the sampling distribution over the trained completion tokens: the
    sampler's own when it reports it, else one no-grad forward on a few rows."""
    mask = tokens.train_mask
    if batch.rollout.entropy is not None:
        num = (batch.rollout.entropy * mask).sum().double()
        num, den = world.sum(torch.stack([num, mask.sum().double()])).tolist()
        return num / den if den else 0.0
    return sampled_entropy(model, tokens.input_ids, tokens.attn, tokens.pos, tokens.prompt_len,
                           mask, temperature)


@torch.inference_mode()
def sampled_entropy(
    model, input_ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, prompt_len: int,
    mask: torch.Tensor, temperature: float = 1.0, rows: int = ENTROPY_ROWS,
) -> float:
    """Mean entropy of the policy's next-token distribution over the completion tokens of
    `rows` completions spread evenly over the batch (one no-grad forward on those rows only)."""
    N = input_ids.shape[0]
    if N == 0 or mask.sum() == 0:
        return 0.0
    pick = torch.linspace(0, N - 1, min(rows, N)).round().long().unique()  # [n]
    T = input_ids.shape[1] - prompt_len
    logits = model(input_ids=input_ids[pick], attention_mask=attn[pick], position_ids=pos[pick],
                   logits_to_keep=T + 1, use_cache=False).logits[:, :-1]  # [n, T, V]
    if temperature not in (0, 1):
        logits = logits / temperature
    return masked_mean(entropy_from_logits(logits, chunk_size=256), mask[pick]).item()


def step_metrics(step: int, drawn: Drawn, entropy: float, update: dict[str, float],
                 extra: dict[str, float], lr: float, seconds: dict[str, float], world: World,
                 batch_size: int) -> dict[str, Any]:
    """The step's line of `metrics.jsonl`."""
    out: dict[str, Any] = {"step": step, **rollout_metrics(drawn.first, world), "entropy": entropy}
    if drawn.dynamic:
        kept = float(world.sum(drawn.batch.num_groups))
        out.update({"refill_rounds": drawn.refills, "kept_groups": kept / batch_size})
    out.update({**extra, **update, "lr": lr})
    out.update({f"{k}_s": v for k, v in seconds.items()})
    return out


def sample_records(step: int, s: Sampled, count: int, prompt_field: str = "question") -> list[dict[str, Any]]:
    """Up to `count` transcripts of `s`, spread over the batch, for `samples.jsonl`."""
    texts, G = s.rollout.texts, s.rollout.n
    comps = s.scored.components if s.scored is not None else {}
    stride = max(1, len(texts) // max(1, count))
    return [
        {"step": step, "prompt": prompt_of(s.rows[i // G], prompt_field),
         "answer": s.rows[i // G].get("answer"), "completion": texts[i],
         "reward": float(s.rewards[i]), "rewards": {k: v[i] for k, v in comps.items()}}
        for i in range(0, len(texts), stride)
    ][:count]
