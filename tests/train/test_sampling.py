"""Stage 1: the prompt order, per-prompt seeds, and completions independent of the rank."""

import torch

from r1lab.data.tasks import generate
from r1lab.data.templates import encode_prompts
from r1lab.rewards import RewardComposer
from r1lab.rollout import SamplingParams, build_engine
from r1lab.train.distributed import World
from r1lab.train.sampling import GroupSampler, PromptOrder, prompt_seeds


def test_prompt_order_is_a_seeded_permutation_per_epoch_and_resumes():
    order = PromptOrder(5, seed=3)
    first = order.take(3) + order.take(2)
    assert sorted(first) == [0, 1, 2, 3, 4]  # one epoch: every row once
    state = order.state_dict()
    nxt = order.take(4)
    again = PromptOrder(5, seed=99)
    again.load_state_dict(state)
    assert again.take(4) == nxt
    assert PromptOrder(5, seed=3).take(5) == first  # same seed, same order


def test_prompt_seeds_depend_on_seed_step_round_and_position_only():
    a = prompt_seeds(1, 7, 0, range(6))
    assert len(set(a)) == 6 and all(0 <= s < 2**63 for s in a)
    assert prompt_seeds(1, 7, 0, [3, 4, 5]) == a[3:]  # a rank's shard: the same seeds
    assert prompt_seeds(2, 7, 0, range(6)) != a and prompt_seeds(1, 8, 0, range(6)) != a
    assert prompt_seeds(1, 7, 1, range(6)) != a  # a DAPO refill round draws afresh


def _sampler(model, tokenizer, world):
    rows = [p.row() for p in generate("addition", 10, seed=0, split="train")]
    params = SamplingParams(n=3, max_new_tokens=8, temperature=1.0)
    encode = lambda rs: encode_prompts(rs, tokenizer, "tiny", "question")  # noqa: E731
    return GroupSampler(build_engine("hf", model, tokenizer), rows, encode,
                        RewardComposer([{"name": "format"}]), params, batch_size=4, seed=5,
                        signal_key=None, world=world)


def test_two_ranks_draw_the_completions_one_process_draws(micro_model, tokenizer):
    one = _sampler(micro_model, tokenizer, World())
    ranks = [_sampler(micro_model, tokenizer, World(r, 2)) for r in range(2)]
    for step in range(2):
        whole = one(step)
        parts = [s(step) for s in ranks]
        assert [p.num_groups for p in parts] == [2, 2]
        assert [r["question"] for p in parts for r in p.rows] == [r["question"] for r in whole.rows]
        assert [t for p in parts for t in p.rollout.texts] == whole.rollout.texts
        T = whole.rollout.logprobs.shape[1]
        logp = torch.cat([torch.nn.functional.pad(p.rollout.logprobs, (0, T - p.rollout.logprobs.shape[1]))
                          for p in parts])
        torch.testing.assert_close(logp, whole.rollout.logprobs, atol=1e-5, rtol=0)
    assert len(set(whole.rollout.texts)) > 1  # sampled, not one repeated completion
