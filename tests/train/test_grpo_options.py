"""GRPO step options: mini-batches and passes (mu), truncation masking, entropy, token counts."""

from pathlib import Path

import pytest
import torch

from r1lab.config import RunConfig
from r1lab.data.tasks import generate
from r1lab.rewards import RewardBatch
from r1lab.train.common import completion_logprobs, join_prompt_completion
from r1lab.train.grpo import GRPOTrainer

MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}


def make_cfg(**algorithm) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"tiny": MICRO},
        "rollout": {"group_size": 4, "max_new_tokens": 10},
        "train": {"batch_size": 2, "micro_batch_size": 2, "seed": 0},
        "optim": {"lr": 1e-2},
        "algorithm": algorithm,
        "log": {"progress": False},
    })


class LengthReward:
    """Reward = completion length in characters / 10; records the rows it was given."""

    def __call__(self, texts, rows):
        self.rows = list(rows)
        total = [len(t) / 10 for t in texts]
        return RewardBatch(total=total, components={"length": total}, metrics={}, errors=0)


def make_trainer(tmp_path: Path, model, tokenizer, **algorithm) -> GRPOTrainer:
    rows = [p.row() for p in generate("addition", 16, seed=0, split="train")]
    trainer = GRPOTrainer(make_cfg(**algorithm), model, tokenizer, rows, tmp_path)
    trainer.rewards = LengthReward()
    return trainer


def count_optimizer_steps(trainer: GRPOTrainer) -> list[int]:
    calls = [0]

    def count(*_):
        calls[0] += 1

    trainer.optimizer.register_step_post_hook(count)
    return calls


@pytest.mark.parametrize(("iterations", "mini", "steps"), [(1, None, 1), (1, 4, 2), (2, None, 2), (2, 4, 4)])
def test_one_optimiser_step_per_mini_batch_per_pass(tmp_path, micro_model, tokenizer, iterations, mini, steps):
    trainer = make_trainer(tmp_path, micro_model, tokenizer, num_iterations=iterations, mini_batch_size=mini)
    calls = count_optimizer_steps(trainer)
    m = trainer.step()
    assert calls[0] == steps
    assert trainer.scheduler.last_epoch == 1  # the schedule counts GRPO steps, not optimiser steps
    if steps == 1:  # on-policy: old = current detached, ratio exactly 1
        assert m["approx_kl"] == 0.0 and m["clip_frac"] == 0.0
    else:  # later mini-batches / passes see a moved policy against the sampler's logprobs
        assert m["approx_kl"] > 0.0


def test_sampler_logprobs_are_the_trainers_old_logprobs(micro_model, tokenizer):
    """mu > 1 reuses the sampler's logprobs as old ones: they must equal a training forward."""
    from r1lab.rollout import SamplingParams, build_engine

    engine = build_engine("hf", micro_model, tokenizer)
    prompts = tokenizer(["1+2=", "33+4="])["input_ids"]
    out = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=8, temperature=0.7, seed=0))
    ids, attn, pos, L = join_prompt_completion(out.prompt_ids, out.completion_ids,
                                               out.completion_mask, engine.pad_id)
    with torch.no_grad():
        logp = completion_logprobs(micro_model, ids, attn, pos, L, temperature=0.7)
    m = out.completion_mask.bool()
    torch.testing.assert_close(logp[m], out.logprobs[m], atol=1e-4, rtol=1e-4)


def test_mask_truncated_removes_cut_completions_from_the_loss(tmp_path, micro_model, tokenizer):
    # random weights almost never emit eos within 10 tokens: nearly everything is truncated
    trainer = make_trainer(tmp_path, micro_model, tokenizer, mask_truncated=True)
    seen = {}
    update = trainer.update

    def spy(tokens, *rest):
        seen["mask"] = tokens.train_mask.clone()
        return update(tokens, *rest)

    trainer.update = spy
    m = trainer.step()
    assert m["truncated_rate"] > 0
    lengths = seen["mask"].sum(-1)  # [N]
    assert (lengths == 0).float().mean().item() == pytest.approx(m["truncated_rate"])
    assert torch.isfinite(torch.tensor(m["loss"]))


def test_entropy_is_logged_and_rows_carry_token_counts(tmp_path, micro_model, tokenizer):
    trainer = make_trainer(tmp_path, micro_model, tokenizer)
    m = trainer.step()
    V = micro_model.config.vocab_size
    assert 0.0 < m["entropy"] <= torch.log(torch.tensor(float(V))).item() + 1e-4
    counts = [r["completion_tokens"] for r in trainer.rewards.rows]
    assert len(counts) == 8 and all(1 <= c <= 10 for c in counts)
    assert m["completion_len"] == pytest.approx(sum(counts) / len(counts))
