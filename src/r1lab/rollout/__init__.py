"""Rollout engines: turn prompts into G sampled completions each, with token ids and logprobs."""

from r1lab.rollout.types import ENGINES, RolloutBatch, SamplingParams

__all__ = ["ENGINES", "RolloutBatch", "SamplingParams", "build_engine"]


@ENGINES.register("vllm")
def _vllm(model, tokenizer):
    """Colocated vLLM (GPU, extra `r1lab[vllm]`); imported only when selected."""
    from r1lab.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model, tokenizer)


def build_engine(name: str, model, tokenizer, dtype: str | None = None):
    """The rollout engine registered as `name` (e.g. "hf"), bound to a model and tokenizer;
    `dtype` ("bfloat16", ...): the dtype it samples in, None for the weights' own."""
    import r1lab.rollout.hf  # noqa: F401  (registers "hf")

    engine = ENGINES.get(name)
    return engine(model, tokenizer) if dtype is None else engine(model, tokenizer, dtype=dtype)
