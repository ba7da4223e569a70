"""Rollout engines: turn prompts into G sampled completions each, with token ids and logprobs."""

from r1lab.rollout.types import ENGINES, RolloutBatch, SamplingParams

__all__ = ["ENGINES", "RolloutBatch", "SamplingParams", "build_engine"]


@ENGINES.register("vllm")
def _vllm(model, tokenizer):
    """Colocated vLLM (GPU, extra `r1lab[vllm]`); imported only when selected."""
    from r1lab.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model, tokenizer)


def build_engine(name: str, model, tokenizer):
    """The rollout engine registered as `name` (e.g. "hf"), bound to a model and tokenizer."""
    import r1lab.rollout.hf  # noqa: F401  (registers "hf")

    return ENGINES.get(name)(model, tokenizer)
