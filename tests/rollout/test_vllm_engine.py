"""The vLLM engine: a clear error without vLLM; on a GPU with vLLM, the same contract as "hf"."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from r1lab.config import RunConfig
from r1lab.rollout import ENGINES, SamplingParams, build_engine

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_vllm_is_registered_and_configurable():
    assert "vllm" in ENGINES
    assert RunConfig.model_validate({"rollout": {"engine": "vllm"}}).rollout.engine == "vllm"


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_selecting_vllm_without_vllm_says_how_to_install(micro_model, tokenizer):
    with pytest.raises(ImportError, match=r"pip install 'r1lab\[vllm\]'.*rollout.engine: hf"):
        build_engine("vllm", micro_model, tokenizer)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vLLM and a GPU")
def test_vllm_logprobs_match_the_trainer_and_follow_weight_updates(micro_model, tokenizer):
    from r1lab.train.common import completion_logprobs, join_prompt_completion

    model = micro_model.cuda()
    engine = build_engine("vllm", model, tokenizer)
    prompts = tokenizer(["Q:1+2\nA:", "Q:30+4\nA:"])["input_ids"]
    out = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=16, temperature=0.7, seed=0))
    assert out.completion_ids.shape[0] == 8
    ids, attn, pos, L = join_prompt_completion(out.prompt_ids, out.completion_ids,
                                               out.completion_mask, engine.pad_id)
    with torch.no_grad():
        logp = completion_logprobs(model, ids, attn, pos, L, temperature=0.7)
    assert ((logp - out.logprobs) * out.completion_mask).abs().max() < 1e-2  # kernels differ
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.policy_updated()
    again = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=16, temperature=0, seed=0))
    ids, attn, pos, L = join_prompt_completion(again.prompt_ids, again.completion_ids,
                                               again.completion_mask, engine.pad_id)
    with torch.no_grad():
        logp = completion_logprobs(model, ids, attn, pos, L)
    assert ((logp - again.logprobs) * again.completion_mask).abs().max() < 1e-2
