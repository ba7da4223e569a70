"""r1lab's own batched, KV-cached sampler for any Hugging Face causal LM (CPU or GPU).

Why not `model.generate`: GRPO needs the sampled tokens' logprobs (so the trainer skips the
"old logprob" forward pass), G samples per prompt without prefilling the prompt G times, and no
compute spent on rows that already finished. The loop below does exactly that:

1. left-pad the P prompts, prefill them once, then repeat the KV cache G times;
2. each step: sample one token for every *active* row, record its logprob;
3. drop finished rows from the batch (and the cache) when the copy costs less than the compute
   it saves, so late steps run on few rows.

Llama-family models (Llama, Qwen2, Qwen3, Mistral) decode through `native.NativeDecoder`, a lean
forward over the same weights and a pre-allocated cache; other models through their own forward.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import torch

from r1lab.rollout.native import NativeDecoder, native_support
from r1lab.rollout.types import ENGINES, RolloutBatch, SamplingParams
from r1lab.runtime import tune_cpu_allocator
from r1lab.tensors import left_pad

__all__ = ["HFSampler", "left_pad", "sample_next"]  # left_pad: re-exported from r1lab.tensors


def sample_next(
    logits: torch.Tensor, params: SamplingParams, uniform: torch.Tensor | None,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits [A, V], uniform [A] in [0, 1) -> (tokens [A], logprobs [A]),
    plus the entropy [A] of the distribution when `entropy` is set.

    Inverse-CDF sampling with pre-drawn uniforms (one random number per row, drawn for the whole
    call at once). The logprob (and entropy) is taken under logits / temperature before top-k /
    top-p truncation, as the trainer computes it.
    """
    logits = logits.float()
    if params.temperature == 0:
        logp = torch.log_softmax(logits, -1)  # [A, V]
        tok = logits.argmax(-1)  # [A]
        out = (tok, logp.gather(-1, tok[:, None]).squeeze(-1))
        return (*out, _entropy(logp)) if entropy else out
    if params.temperature != 1.0:
        logits = logits / params.temperature
    logp = torch.log_softmax(logits, -1)  # [A, V]
    filtered = logp
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logp, params.top_k, dim=-1).values[:, -1:]  # [A, 1]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logp, order = torch.sort(filtered, descending=True)  # [A, V]
        probs = torch.softmax(sorted_logp, -1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        sorted_logp = sorted_logp.masked_fill(drop, float("-inf"))
        filtered = torch.full_like(filtered, float("-inf")).scatter(-1, order, sorted_logp)
    probs = logp.exp()  # [A, V]
    cdf = (filtered.exp() if filtered is not logp else probs).cumsum(-1)  # [A, V] unnormalised
    target = (uniform * cdf[:, -1])[:, None]  # [A, 1], strictly below the total mass
    tok = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    out = (tok, logp.gather(-1, tok[:, None]).squeeze(-1))
    return (*out, _entropy(logp, probs)) if entropy else out


def _entropy(logp: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy [A] of the distributions with log-probabilities logp [A, V] (0 log 0 = 0)."""
    return torch.special.entr(logp.exp() if probs is None else probs).sum(-1)


#: the largest KV cache (bytes) `HFSampler` keeps allocated between calls on CPU. Kept, a cache
#: is resident through the training forward and backward too, where the step's peak is; a larger
#: one faults in again in well under 2% of its decode (4M Qwen2, 16 rows x 1,024 tokens: a
#: 143 MB cache, ~5 s of decoding), so it is not worth the memory
KV_KEEP_BYTES = 64 << 20


@ENGINES.register("hf")
class HFSampler:
    """Rollout engine over a transformers causal LM: `generate(prompt_ids, params)`.

    `native=None` (default) decodes Llama-family models with `NativeDecoder` and anything else
    with the model's own forward; `native=False` always uses the model's forward.
    """

    def __init__(self, model, tokenizer, native: bool | None = None, dtype: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.native = native
        # the native decoder's matmul dtype (weights cast once per call); None: the weights' own
        self.dtype = None if dtype is None else getattr(torch, dtype)
        if model.device.type == "cpu":
            tune_cpu_allocator()
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.last_backend = ""  # "native" or "hf": which path the last call took
        self._kv_storage: torch.Tensor | None = None  # CPU: the KV cache kept between calls

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 on_step: Callable[[int, list[int], list[int]], None] | None = None) -> RolloutBatch:
        """`on_step(t, rows, tokens)`, when given, is called after every decoding step with the
        rows (of the P*n) that produced a token at step t and those tokens (a row's last one
        may be eos): what a streaming server needs. It runs on the decoding thread. It may return
        rows to stop now (finish reason `stop`), e.g. those of a client that disconnected."""
        model, device = self.model, self.model.device
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        n = params.n
        uniforms = params.uniforms(len(prompt_ids), device)  # [T, P*n], one per token
        with torch.inference_mode():  # no version counters or view tracking: ~8% faster decoding
            out = self._decode(prompt_ids, params, uniforms, on_step)
        # clones made outside inference mode are normal tensors, which autograd may save
        tokens, logprobs, entropy, lengths = (x.clone() for x in out[:4])
        finish = out[4]
        width = tokens.shape[1]
        comp_mask = torch.arange(width, device=device)[None, :] < lengths[:, None]  # [N, T']
        texts = self.tokenizer.batch_decode(
            [row[: int(n_)].tolist() for row, n_ in zip(tokens, lengths)], skip_special_tokens=True
        )
        if was_training:
            model.train()
        return RolloutBatch(
            prompt_ids=[list(p) for p in prompt_ids], completion_ids=tokens,
            completion_mask=comp_mask.float(), logprobs=logprobs, texts=texts, finish_reasons=finish,
            n=n, timings={"generate_s": time.perf_counter() - t0},
            entropy=entropy,
        )

    def _backend(self, rows: int, max_len: int):
        why = native_support(self.model, max_len) if self.native is not False else "native=False"
        if why is None:
            self.last_backend = "native"
            return NativeDecoder(self.model, rows, max_len, self._storage(rows, max_len),
                                 matmul_dtype=self.dtype)
        if self.native:
            raise ValueError(f"native decoding was asked for but is not possible: {why}")
        self.last_backend = "hf"
        return _HFForward(self.model)

    def _storage(self, rows: int, max_len: int) -> torch.Tensor | None:
        """On CPU, one KV-cache allocation kept from call to call (up to `KV_KEEP_BYTES`).

        A cache above glibc's mmap threshold (32 MiB at most) is a fresh mapping each call, and
        every page of it faults on first touch: ~20 ms of a ~270 ms decode in the benchmark
        setting. Kept, it is written over instead. On GPUs torch's caching allocator does this.
        """
        emb = self.model.get_input_embeddings().weight
        n = NativeDecoder.cache_elements(self.model, rows, max_len)
        if emb.device.type != "cpu" or n * emb.element_size() > KV_KEEP_BYTES:
            self._kv_storage = None
            return None
        s = self._kv_storage
        if s is None or s.numel() < n or s.dtype != emb.dtype:
            with torch.inference_mode(False):  # a normal tensor: usable outside inference mode
                self._kv_storage = torch.empty(n, dtype=emb.dtype)
        return self._kv_storage

    def _decode(self, prompt_ids: list[list[int]], params: SamplingParams, uniforms: torch.Tensor,
                on_step=None):
        """Decode P prompts x n samples with the given uniforms [T, P*n]. Returns tokens,
        logprobs, entropy [P*n, T'] (padded), lengths [P*n] and finish reasons."""
        device = self.model.device
        n, N, T = params.n, len(prompt_ids) * params.n, params.max_new_tokens
        ids, mask, pos = left_pad(prompt_ids, self.pad_id, device)  # [P, L]
        backend = self._backend(N, ids.shape[1] + T)
        logits = backend.prefill(ids, mask, pos, n)  # [P, V]: the prompt is computed once
        logits = logits.repeat_interleave(n, 0) if n > 1 else logits  # [N, V]
        next_pos = (pos[:, -1] + 1).repeat_interleave(n, 0)  # [N]
        tokens = torch.full((N, T), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((N, T), device=device)
        entropy = torch.zeros((N, T), device=device)
        lengths = torch.full((N,), T, dtype=torch.long, device=device)
        finish = ["length"] * N
        # `active`: rows of the full batch held by the backend; `alive`: those still generating.
        # A finished row stays in the batch (its tokens are discarded) until dropping it pays.
        active = torch.arange(N, device=device)
        alive = torch.ones(N, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_ids, device=device)
        stop_check = _StopChecker(self.tokenizer, params.stop) if params.stop else None
        for t in range(T):
            tok, lp, ent = sample_next(logits, params, uniforms[t, active], entropy=True)
            tokens[active, t] = tok  # [A]
            cancel = on_step(t, active[alive].tolist(), tok[alive].tolist()) if on_step is not None else None
            logprobs[active, t] = lp
            entropy[active, t] = ent
            done = torch.isin(tok, eos)  # [A]
            if cancel:  # rows on_step asked to stop (a streaming client that went away)
                done |= torch.isin(active, torch.tensor(sorted(cancel), device=device))
            if stop_check is not None:
                done |= stop_check(tokens[active, : t + 1])
            done &= alive
            if done.any():
                ended = active[done]
                lengths[ended] = t + 1
                for row in ended.tolist():
                    finish[row] = "stop"
                alive &= ~done
                n_alive = int(alive.sum())
                if n_alive == 0:
                    break
                size = backend.batch_size(n_alive)  # >= n_alive: see NativeDecoder.batch_size
                if size < len(alive) and backend.worth_compacting(len(alive) - size, size, T - 1 - t):
                    kept = alive.clone()
                    if size > n_alive:  # finished rows in the lowest slots stay: they need no move
                        kept[(~alive).nonzero()[: size - n_alive, 0]] = True
                    order = backend.keep(kept.nonzero().squeeze(-1))  # [A']: old row per new slot
                    active, tok, next_pos, alive = active[order], tok[order], next_pos[order], alive[order]
            if t == T - 1:
                break
            logits = backend.step(tok, next_pos)  # [A, V]
            next_pos = next_pos + 1
        width = int(lengths.max().item()) if N else 0
        keep = torch.arange(width, device=device)[None, :] < lengths[:, None]  # [N, T']
        return (tokens[:, :width].masked_fill(~keep, self.pad_id), logprobs[:, :width] * keep,
                entropy[:, :width] * keep, lengths, finish)


class _HFForward:
    """The fallback backend: the model's own forward over a transformers DynamicCache."""

    def __init__(self, model) -> None:
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)
        # transformers >= 5.24 names the cache argument `cache` (`past_key_values` is deprecated)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = {"cache" if "cache" in params else "past_key_values": self.cache}

    def prefill(self, ids, mask, pos, repeat: int = 1) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=1, **self.cache_arg)
        if repeat > 1:
            self.cache.batch_repeat_interleave(repeat)
        self.mask = mask.repeat_interleave(repeat, 0)  # [N, L]
        return out.logits[:, -1]  # [P, V]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.mask), 1))], 1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask,
                         position_ids=positions[:, None], use_cache=True, **self.cache_arg)
        return out.logits[:, -1]  # [A, V]

    def worth_compacting(self, dead: int, alive: int, steps_left: int) -> bool:
        return steps_left > 0

    def batch_size(self, alive: int) -> int:
        return alive

    def keep(self, rows: torch.Tensor) -> torch.Tensor:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        return rows


class _StopChecker:
    """Flags rows whose decoded tail ends with a stop string (checked on a short tail only)."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.tail = max(len(s) for s in stop) + 2  # tokens are at least one character

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:  # rows: [A, t]
        tails = self.tokenizer.batch_decode(rows[:, -self.tail :].tolist())
        return torch.tensor([any(s in txt for s in self.stop) for txt in tails], device=rows.device)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model and tokenizer define no eos token; generation could not stop")
    return ids
