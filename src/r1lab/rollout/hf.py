"""r1lab's own batched, KV-cached sampler for any Hugging Face causal LM (CPU or GPU).

Why not `model.generate`: GRPO needs the sampled tokens' logprobs (so the trainer skips the
"old logprob" forward pass), G samples per prompt without prefilling the prompt G times, and no
compute spent on rows that already finished. The loop below does exactly that:

1. left-pad the P prompts, prefill them once, then repeat the KV cache G times;
2. each step: sample one token for every *active* row, record its logprob;
3. drop finished rows from the batch (and the cache), so late steps run on few rows.
"""

from __future__ import annotations

import time

import torch

from r1lab.rollout.types import ENGINES, RolloutBatch, SamplingParams


def left_pad(prompt_ids: list[list[int]], pad_id: int, device: torch.device):
    """Left-pad token lists: returns input_ids [P, L], attention_mask [P, L], position_ids [P, L]."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def sample_next(
    logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits: [A, V] -> (tokens [A], logprobs [A]).

    The logprob is taken under logits / temperature before top-k / top-p truncation.
    """
    logits = logits.float()
    if params.temperature == 0:
        logp = torch.log_softmax(logits, -1)  # [A, V]
        tok = logits.argmax(-1)  # [A]
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    logits = logits / params.temperature
    logp = torch.log_softmax(logits, -1)  # [A, V]
    filtered = logits
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # [A, 1]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, descending=True)  # [A, V]
        probs = torch.softmax(sorted_logits, -1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        filtered = torch.full_like(filtered, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(filtered, -1)
    tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # [A]
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


@ENGINES.register("hf")
class HFSampler:
    """Rollout engine over a transformers causal LM: `generate(prompt_ids, params)`."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        model, device = self.model, self.model.device
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=device).manual_seed(params.seed)
        from transformers import DynamicCache

        ids, mask, pos = left_pad(prompt_ids, self.pad_id, device)  # [P, L]
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1]  # [P, V]
        n, N, T = params.n, len(prompt_ids) * params.n, params.max_new_tokens
        if n > 1:  # share the prefill across the group
            logits = logits.repeat_interleave(n, 0)  # [N, V]
            cache.batch_repeat_interleave(n)
            mask = mask.repeat_interleave(n, 0)
            pos = pos.repeat_interleave(n, 0)
        next_pos = pos[:, -1] + 1  # [N]
        tokens = torch.full((N, T), self.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((N, T), device=device)
        lengths = torch.zeros(N, dtype=torch.long, device=device)
        finish = ["length"] * N
        active = torch.arange(N, device=device)  # rows of the full batch still generating
        eos = torch.tensor(self.eos_ids, device=device)
        stop_check = _StopChecker(self.tokenizer, params.stop) if params.stop else None
        for t in range(T):
            tok, lp = sample_next(logits, params, gen)  # [A], [A]
            tokens[active, t] = tok
            logprobs[active, t] = lp
            lengths[active] = t + 1
            done = torch.isin(tok, eos)  # [A]
            if stop_check is not None:
                done |= stop_check(tokens[active, : t + 1])
            if done.any():
                for row in active[done].tolist():
                    finish[row] = "stop"
                keep = (~done).nonzero().squeeze(-1)  # [A']
                if keep.numel() == 0:
                    break
                active, tok = active[keep], tok[keep]
                mask, next_pos = mask[keep], next_pos[keep]
                cache.batch_select_indices(keep)
            if t == T - 1:
                break
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # [A, L+t+1]
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                        past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]  # [A, V]
            next_pos = next_pos + 1
        width = int(lengths.max().item()) if N else 0
        comp_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()  # [N, T']
        tokens, logprobs = tokens[:, :width], logprobs[:, :width] * comp_mask
        texts = self.tokenizer.batch_decode(
            [row[: int(n_)].tolist() for row, n_ in zip(tokens, lengths)], skip_special_tokens=True
        )
        if was_training:
            model.train()
        return RolloutBatch(
            prompt_ids=[list(p) for p in prompt_ids], completion_ids=tokens,
            completion_mask=comp_mask, logprobs=logprobs, texts=texts, finish_reasons=finish,
            n=n, timings={"generate_s": time.perf_counter() - t0},
        )


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
