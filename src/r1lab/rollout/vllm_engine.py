"""vLLM rollout engine for GPUs (`rollout.engine: vllm`, extra `r1lab[vllm]`).

Colocated: the vLLM engine lives in the trainer's process, on the trainer's GPU, and shares its
memory through vLLM's sleep mode. One `generate` call:

1. wake the engine's weights (`llm.wake_up(tags=["weights"])`), load the policy's current
   weights into it when the trainer stepped since the last call (`policy_updated()`), then wake
   the KV cache (`llm.wake_up(tags=["kv_cache"])`);
2. generate G samples per prompt from token ids (`SamplingParams(n=G, logprobs=0)`: the sampled
   token's logprob, so the trainer needs no "old logprob" pass);
3. `llm.sleep(level=2)`: weights and KV cache are released for the backward pass (level 2 drops
   the weights instead of copying them to CPU, since they are reloaded from the trainer anyway).

The sampled logprobs must be those of the *processed* distribution (after temperature), which
vLLM returns with `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2); older versions return
the raw model's and the trainer's ratio is then off by the temperature at T != 1.

Weights: by default the policy's `state_dict()`; `state_fn` replaces it (under FSDP2 the
unsharded state gathered from the shards, `ParallelPolicy.full_state_dict`; for a LoRA policy
the merged weights). With `lora_sync=True` and a LoRA policy, only the adapter goes to vLLM
after each step (saved to a fresh directory and passed as a new `LoRARequest`; vLLM applies it
over the base it loaded once), which is what vLLM supports for adapters.

Seeds: with `SamplingParams.seeds`, each prompt is its own request seeded by its seed, so its
completions do not depend on the other prompts of the batch (vLLM's per-request generator).

After every sync the trainer's `MismatchProbe` (`r1lab.rollout.sync`) compares vLLM's sampled
log-probs with its own, so a sync that loads nothing is reported as `rollout/mismatch_kl`.

Not built: vLLM as a separate server process (`trl vllm-serve` style); colocated only.
Tested only where a GPU and vLLM exist (`tests/rollout/test_vllm_engine.py`, marked `gpu`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from r1lab.rollout.types import RolloutBatch, SamplingParams

INSTALL_HINT = (
    "rollout.engine 'vllm' needs vLLM, which is not installed: pip install 'r1lab[vllm]' "
    "(Linux with a CUDA GPU), or use rollout.engine: hf"
)


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from exc
    return vllm


class VLLMEngine:
    """Rollout engine over a colocated `vllm.LLM` that follows the trainer's weights."""

    def __init__(self, model, tokenizer, gpu_memory_utilization: float = 0.3,
                 sleep: bool = True, max_model_len: int | None = None,
                 state_fn: Callable[[], dict[str, torch.Tensor]] | None = None,
                 lora_sync: bool = True, dtype: str | None = None) -> None:
        vllm = _import_vllm()
        if not torch.cuda.is_available():
            raise RuntimeError("rollout.engine 'vllm' needs a CUDA GPU; use rollout.engine: hf")
        from r1lab.models.lora import is_lora, merged_state_dict

        self.model, self.tokenizer, self.sleep_between = model, tokenizer, sleep
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.lora = is_lora(model) and lora_sync
        self.state_fn = state_fn or ((lambda: merged_state_dict(model)) if is_lora(model)
                                     else model.state_dict)
        self._lora_request = None
        self._syncs = 0
        # vLLM loads from a directory: the policy as it is now (later steps sync in memory)
        self._dir = tempfile.TemporaryDirectory(prefix="r1lab-vllm-")
        from r1lab.models.lora import save_plain

        # the frozen base alone when adapters follow; else the full weights as they are now
        state = merged_state_dict(model, merge=False) if self.lora else self.state_fn()
        save_plain(model, state, self._dir.name)
        tokenizer.save_pretrained(self._dir.name)
        # bf16 sampling under mixed precision (fp32 master weights stay with the trainer)
        dtype = dtype or str(next(model.parameters()).dtype).removeprefix("torch.")
        kwargs = dict(model=self._dir.name, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                      enable_sleep_mode=sleep, max_model_len=max_model_len, enable_prefix_caching=True)
        if self.lora:
            kwargs.update(enable_lora=True, max_lora_rank=max(8, model.peft_config["default"].r))
        try:
            self.llm = vllm.LLM(logprobs_mode="processed_logprobs", **kwargs)
        except TypeError:  # vLLM < 0.10.2: raw logprobs (exact at temperature 1)
            self.llm = vllm.LLM(**kwargs)
        self._stale = False
        self._asleep = False
        if sleep:
            self.llm.sleep(level=2)
            self._asleep, self._stale = True, True  # level 2 dropped the weights

    # ------------------------------------------------------------------ weights
    def policy_updated(self) -> None:
        """Called by the trainer after each optimiser step: reload weights before sampling."""
        self._stale = True

    def _load_weights(self) -> None:
        self._syncs += 1
        if self.lora:  # only the adapter: a new LoRARequest over the base vLLM loaded once
            from vllm.lora.request import LoRARequest

            path = Path(self._dir.name) / f"adapter-{self._syncs}"
            self.model.save_pretrained(path)
            self._lora_request = LoRARequest(f"policy-{self._syncs}", self._syncs, str(path))
            self._stale = False
            return
        weights = ((name, t.detach()) for name, t in self.state_fn().items())
        engine = self.llm.llm_engine
        try:  # vLLM V0 / in-process V1 worker: the model object is reachable
            runner = engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(weights=weights)
        except AttributeError:  # V1 with a separate worker: call it through the executor
            state = [(n, t) for n, t in weights]
            self.llm.collective_rpc(_load_into_worker, args=(state,))
        self.llm.reset_prefix_cache()  # cached prefixes belong to the old weights
        self._stale = False

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        vllm = _import_vllm()
        t0 = time.perf_counter()
        if self._asleep:
            self.llm.wake_up(tags=["weights"])
        if self._stale:
            self._load_weights()
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        def sampling(seed):
            return vllm.SamplingParams(
                n=params.n, max_tokens=params.max_new_tokens, temperature=params.temperature,
                top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else -1,
                stop=list(params.stop) or None, seed=seed, logprobs=0,
                include_stop_str_in_output=True,
            )

        seeds = getattr(params, "seeds", None)
        sp = [sampling(s) for s in seeds] if seeds is not None else sampling(params.seed)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sp,
                                 use_tqdm=False, lora_request=self._lora_request)
        if self.sleep_between:
            self.llm.sleep(level=2)
            self._asleep = True
        rows = [c for o in outs for c in o.outputs]  # P * n, grouped by prompt
        width = max((len(c.token_ids) for c in rows), default=0)
        N = len(rows)
        tokens = torch.full((N, width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((N, width))
        mask = torch.zeros((N, width))
        for i, c in enumerate(rows):
            n = len(c.token_ids)
            tokens[i, :n] = torch.tensor(c.token_ids, dtype=torch.long)
            logprobs[i, :n] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)])
            mask[i, :n] = 1
        device = self.model.device
        return RolloutBatch(
            prompt_ids=[list(p) for p in prompt_ids], completion_ids=tokens.to(device),
            completion_mask=mask.to(device), logprobs=logprobs.to(device),
            texts=self.tokenizer.batch_decode([c.token_ids for c in rows], skip_special_tokens=True),
            finish_reasons=["length" if c.finish_reason == "length" else "stop" for c in rows],
            n=params.n, timings={"generate_s": time.perf_counter() - t0},
        )

    def close(self) -> None:
        self._dir.cleanup()


def _load_into_worker(worker, state) -> None:
    """Runs inside a vLLM worker (collective_rpc): load (name, tensor) pairs into its model."""
    worker.model_runner.model.load_weights(weights=state)
