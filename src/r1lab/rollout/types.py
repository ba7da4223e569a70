"""Plain data passed between the rollout engine and the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from r1lab.registry import Registry

#: name -> engine class; an engine is constructed as cls(model, tokenizer) and has
#: generate(prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch
ENGINES: Registry[type] = Registry("rollout_engine", "generate completions for prompts")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt (the GRPO group size G)
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class RolloutBatch:
    """P prompts x n completions, grouped contiguously: rows i*n .. i*n+n-1 answer prompt i.

    Completion tensors are right-padded; `logprobs` are the sampled tokens' log-probabilities
    under the sampling distribution before top-p/top-k truncation (logits / temperature), i.e.
    exactly what the trainer's forward pass computes, so on-policy training needs no extra pass.
    """

    prompt_ids: list[list[int]]  # P prompts, unpadded
    completion_ids: torch.Tensor  # [N, T] long, pad after the end
    completion_mask: torch.Tensor  # [N, T] float, 1 for generated tokens (eos included)
    logprobs: torch.Tensor  # [N, T] float, 0 on padding
    texts: list[str]  # N decoded completions (special tokens dropped)
    finish_reasons: list[str]  # N of "stop" (eos or a stop string) or "length"
    n: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    #: [N, T] entropy of the sampling distribution at each completion token (0 on padding), for
    #: the entropy metric; None when the engine does not report it (the trainer then computes it)
    entropy: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.completion_mask.sum(-1)
