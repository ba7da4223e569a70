"""Plain data passed between the rollout engine and the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from r1lab.registry import Registry

#: name -> engine class; an engine is constructed as cls(model, tokenizer) and has
#: generate(prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch
ENGINES: Registry[type] = Registry("rollout_engine", "generate completions for prompts")


#: 64-bit odd constants of splitmix64 (Steele, Lea & Flood 2014), the mixer `completion_seed` uses
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_M64 = (1 << 64) - 1


def completion_seed(seed: int, index: int) -> int:
    """The seed of completion `index` of a prompt whose seed is `seed`: splitmix64 of the pair,
    so neighbouring seeds and indices give unrelated streams. A pure function of (seed, index):
    no batch, order, rank or process enters it.

    >>> completion_seed(0, 0) == completion_seed(0, 0) != completion_seed(0, 1) != completion_seed(1, 0)
    True
    >>> 0 <= completion_seed(-5, 3) < 2 ** 63
    True
    """
    x = (seed * _GOLDEN + index * _MIX1 + _MIX2) & _M64
    for shift, mul in ((30, _MIX1), (27, _MIX2)):
        x = ((x ^ (x >> shift)) * mul) & _M64
    return (x ^ (x >> 31)) >> 1  # 63 bits: any torch.Generator takes it


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Randomness: with `seeds` (one per prompt), completion j of prompt i
    draws only from a stream seeded by `completion_seed(seeds[i], j)`, so it depends on its
    prompt, that seed and j alone, not on the other prompts of the batch, their order or the
    process that samples it; else one stream for the whole call from `seed` (None: torch's
    global generator), where a row's draws depend on its place in the batch."""

    n: int = 1  # completions per prompt (the GRPO group size G)
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None
    seeds: tuple[int, ...] | None = None  # one per prompt; takes precedence over `seed`

    def __post_init__(self) -> None:
        if self.seeds is not None and (not isinstance(self.seeds, tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in self.seeds)):
            raise TypeError(f"SamplingParams.seeds: a tuple of ints, one per prompt (got {self.seeds!r})")

    def uniforms(self, prompts: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The uniform draws [max_new_tokens, prompts * n] in [0, 1) of one call: column
        i * n + j is completion j of prompt i, row t its token t (inverse-CDF sampling)."""
        T, N = self.max_new_tokens, prompts * self.n
        if self.seeds is None:
            gen = None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)
            return torch.rand((T, N), generator=gen, device=device)
        if len(self.seeds) != prompts:
            raise ValueError(f"SamplingParams.seeds: {len(self.seeds)} seeds for {prompts} prompts "
                             "(one per prompt)")
        # one CPU generator per completion, whatever the device: the same draws everywhere
        cols = [torch.rand(T, generator=torch.Generator().manual_seed(completion_seed(s, j)))
                for s in self.seeds for j in range(self.n)]
        return (torch.stack(cols, 1) if cols else torch.empty((T, 0))).to(device)  # [T, N]


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
