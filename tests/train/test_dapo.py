"""DAPO extras: group selection and concatenation, dynamic sampling, truncation mask, entropy."""

from pathlib import Path

import pytest
import torch

from r1lab.algorithms import entropy_from_logits
from r1lab.config import RunConfig
from r1lab.data.tasks import generate
from r1lab.rewards import RewardBatch
from r1lab.rollout import RolloutBatch
from r1lab.train.batch import Sampled, concat_sampled, loss_mask, select_groups
from r1lab.train.distributed import World
from r1lab.train.grpo import GRPOTrainer
from r1lab.train.metrics import sampled_entropy
from r1lab.train.sampling import fill_batch

PAD = 0


def fake_sampled(rewards: list[float], G: int, T: int, tag: int = 0) -> Sampled:
    """len(rewards) / G groups; completion tokens = tag * 100 + row, lengths 1..T."""
    N = len(rewards)
    lengths = torch.tensor([1 + i % T for i in range(N)])
    mask = (torch.arange(T) < lengths[:, None]).float()  # [N, T]
    ids = (tag * 100 + torch.arange(N))[:, None].expand(N, T) * mask.long()  # [N, T]
    rollout = RolloutBatch(
        prompt_ids=[[tag, g] for g in range(N // G)], completion_ids=ids, completion_mask=mask,
        logprobs=-mask, texts=[f"{tag}:{i}" for i in range(N)],
        finish_reasons=["stop"] * N, n=G)
    rows = [{"question": f"{tag}:{g}"} for g in range(N // G)]
    return Sampled(rows, rollout, torch.tensor(rewards))


def test_select_groups_keeps_whole_groups_in_order():
    s = fake_sampled([0, 1, 1, 1, 0, 0], G=2, T=3)
    out = select_groups(s, [2, 0])
    assert out.rows == [{"question": "0:2"}, {"question": "0:0"}]
    assert out.rollout.texts == ["0:4", "0:5", "0:0", "0:1"]
    assert out.rewards.tolist() == [0.0, 0.0, 0.0, 1.0]
    assert out.rollout.prompt_ids == [[0, 2], [0, 0]]


def test_concat_pads_completions_to_the_longest():
    a, b = fake_sampled([0, 1], G=2, T=2, tag=1), fake_sampled([1, 0], G=2, T=5, tag=2)
    out = concat_sampled([a, b], pad_id=PAD)
    assert out.rollout.completion_ids.shape == (4, 5)
    assert out.rollout.completion_mask[:2, 2:].sum() == 0  # padding added to the short round
    assert out.rollout.lengths.tolist() == [1, 2, 1, 2]
    assert out.rewards.tolist() == [0, 1, 1, 0] and out.num_groups == 2


def rounds_of(*rewards: list[float], G: int = 2):
    calls = []

    def sample(round_):
        calls.append(round_)
        return fake_sampled(rewards[round_], G=G, T=3, tag=round_)

    return sample, calls


def test_dynamic_sampling_refills_with_groups_that_have_signal():
    # round 0: groups 1, 3 have signal; round 1: groups 0, 1 -> B = 3 kept, the surplus dropped
    sample, calls = rounds_of([1, 1, 0, 1, 0, 0, 1, 0], [0, 1, 1, 0, 1, 1, 1, 1])
    first, batch, extra = fill_batch(sample, batch_groups=3, max_refill_rounds=5, pad_id=PAD)
    assert calls == [0, 1] and extra == 1
    assert first.num_groups == 4  # the unfiltered first round, for the curves
    assert [r["question"] for r in batch.rows] == ["0:1", "0:3", "1:0"]
    grouped = batch.rewards.view(-1, 2)
    assert (grouped.max(1).values > grouped.min(1).values).all()


def test_dynamic_sampling_stops_at_the_refill_budget():
    sample, calls = rounds_of([1, 1, 0, 1], [0, 0, 1, 1], [1, 1, 1, 1])
    _, batch, extra = fill_batch(sample, batch_groups=2, max_refill_rounds=2, pad_id=PAD)
    assert calls == [0, 1, 2] and extra == 2
    assert batch.num_groups == 1  # trains on what it has


def test_dynamic_sampling_without_signal_trains_on_the_first_round():
    sample, _ = rounds_of([1, 1, 0, 0], [0, 0, 1, 1])
    first, batch, _ = fill_batch(sample, batch_groups=2, max_refill_rounds=1, pad_id=PAD)
    assert batch is first


def test_loss_mask_zeroes_truncated_rows():
    mask = torch.ones(3, 4)
    out = loss_mask(mask, ["stop", "length", "stop"])
    assert out.sum(-1).tolist() == [4, 0, 4]


def test_sampled_entropy_matches_a_full_computation(micro_model):
    torch.manual_seed(0)
    ids = torch.randint(3, 50, (4, 9))  # [N, L+T], L = 5
    attn, pos = torch.ones_like(ids), torch.arange(9).expand(4, 9)
    mask = torch.ones(4, 4)
    mask[1, 2:] = 0
    got = sampled_entropy(micro_model, ids, attn, pos, 5, mask, temperature=0.5, rows=16)
    with torch.no_grad():
        logits = micro_model(input_ids=ids).logits[:, 4:-1] / 0.5  # [N, T, V]
    want = (entropy_from_logits(logits) * mask).sum() / mask.sum()
    assert got == pytest.approx(want.item(), rel=1e-4)


class ParityReward:
    """1 when the completion has an even number of characters: some groups split, some agree."""

    def __call__(self, texts, rows):
        total = [float(len(t) % 2 == 0) for t in texts]
        return RewardBatch(total=total, components={"parity": total}, metrics={}, errors=0)


def test_trainer_step_with_dynamic_sampling(tmp_path: Path, micro_model, tokenizer):
    cfg = RunConfig.model_validate({
        "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                           "intermediate_size": 64, "max_position_embeddings": 128}},
        "rollout": {"group_size": 2, "max_new_tokens": 8},
        "train": {"batch_size": 4, "micro_batch_size": 8, "seed": 0},
        "algorithm": {"dynamic_sampling": True, "max_refill_rounds": 2, "eps_high": 0.28},
        "log": {"progress": False},
    })
    rows = [p.row() for p in generate("addition", 40, seed=0, split="train")]
    trainer = GRPOTrainer(cfg, micro_model, tokenizer, rows, tmp_path)
    trainer.rewards = ParityReward()
    seen = {}
    update = trainer.update

    def spy(tokens, *rest):
        seen["N"] = len(tokens)
        return update(tokens, *rest)

    trainer.update = spy
    m = trainer.step()
    assert 0 <= m["refill_rounds"] <= 2
    assert seen["N"] == round(m["kept_groups"] * 4) * 2
    assert torch.isfinite(torch.tensor(m["loss"]))


def test_dynamic_sampling_judges_signal_by_accuracy_not_the_shaped_total():
    # group 0: all wrong, but a length penalty makes the totals differ; group 1: one right
    def sample(round_):
        s = fake_sampled([-0.1, -0.3, 1.0, -0.2], G=2, T=3, tag=round_)
        s.signal = torch.tensor([0.0, 0.0, 1.0, 0.0])  # accuracy
        return s

    first, batch, extra = fill_batch(sample, batch_groups=1, max_refill_rounds=0, pad_id=PAD)
    assert [r["question"] for r in batch.rows] == ["0:1"]
    assert batch.signal.tolist() == [1.0, 0.0]
    torch.testing.assert_close(batch.rewards, torch.tensor([1.0, -0.2]))
    # without an accuracy signal the shaped totals would have kept the all-wrong group 0
    plain = fake_sampled([-0.1, -0.3, 1.0, -0.2], G=2, T=3)
    _, kept, _ = fill_batch(lambda r: plain, batch_groups=1, max_refill_rounds=0, pad_id=PAD)
    assert [r["question"] for r in kept.rows] == ["0:0"]


def _rank_fill(world, rounds_rewards, B, G):
    """Each rank samples its shard of every round's global batch; returns the kept questions."""
    mine = world.shard(B)

    def sample(round_):
        rewards = rounds_rewards[round_][mine.start * G: mine.stop * G]
        s = fake_sampled(rewards, G=G, T=3, tag=round_)
        for i, row in enumerate(s.rows):
            row["question"] = f"{round_}:{mine.start + i}"  # global group positions
        return s

    _, batch, extra = fill_batch(sample, batch_groups=B, max_refill_rounds=5, pad_id=PAD,
                                 world=world)
    return [r["question"] for r in batch.rows], extra


def test_dynamic_sampling_keeps_the_same_groups_on_two_processes():
    """Two gloo processes, each with half of every round's groups, keep together exactly the
    groups (in order) that one process keeps: the choice is made over the global batch."""
    from .dist_helpers import run_ranks

    # B = 4 groups of 2 per round, groups 0-1 on rank 0, 2-3 on rank 1; round 0: groups 1, 3
    # have signal; round 1: groups 0, 1 (both on rank 0): rank 1 keeps only round 0's group 3
    rounds = [[1, 1, 0, 1, 0, 0, 1, 0], [0, 1, 1, 0, 1, 1, 1, 1]]
    (q0, e0), (q1, e1) = run_ranks(_rank_fill, 2, rounds, 4, 2)
    one, e = _rank_fill(World(), rounds, 4, 2)
    assert one == ["0:1", "0:3", "1:0", "1:1"] and e == e0 == e1 == 1
    assert q0 == ["0:1", "1:0", "1:1"] and q1 == ["0:3"]
