"""Data parallelism on real processes (gloo, 2 ranks): the gradient step of a GRPO batch split
by whole groups over 2 ranks equals the 1-process step, under ddp and fsdp2.

The batch is fixed (8 completions in 4 groups, ragged lengths, fixed advantages), so these
tests check the strategies alone: the global token normaliser, the gradient sum, the sharded
clip norm, AdamW over shards, the unsharded state dict."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import MICRO
from tests.train.dist_helpers import run_ranks

from r1lab.algorithms import AGGREGATIONS, POLICY_LOSSES
from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
from r1lab.train.common import completion_logprobs
from r1lab.train.distributed import ParallelPolicy, World, peak_memory, prepare_policy

G, GROUPS, STEPS = 2, 4, 3


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """8 rows [prompt 3 | completion up to 6], ragged completion lengths, fixed advantages."""
    gen = torch.Generator().manual_seed(7)
    N, L, T = G * GROUPS, 3, 6
    ids = torch.randint(10, 60, (N, L + T), generator=gen)  # [N, L+T]
    lengths = torch.tensor([6, 2, 5, 1, 4, 6, 3, 2])  # [N]
    attn = torch.ones(N, L + T, dtype=torch.long)
    attn[:, L:] = (torch.arange(T)[None] < lengths[:, None]).long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.3, -0.3])[:, None].expand(N, T)  # [N, T]
    return ids, attn, pos, adv, L


def rank_rows(world: World) -> tuple[tuple, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batch()`, its completion mask [N, T], this rank's rows (its whole groups) and the
    global token normaliser."""
    ids, attn, pos, adv, L = data = batch()
    mask = attn[:, L:].float()  # [N, T]
    groups = world.shard(GROUPS)
    rows = torch.arange(groups.start * G, groups.stop * G)
    return data, mask, rows, world.sum(mask[rows].sum()).float()


def train(world: World, strategy: str) -> dict:
    """STEPS optimiser steps on this rank's groups; per-step global loss, final full weights."""
    torch.manual_seed(0)
    model = build_tiny_model(MICRO, build_char_tokenizer(), seed=world.rank)  # ranks differ...
    policy: ParallelPolicy = prepare_policy(model, strategy, world)  # ...until ddp broadcasts
    if strategy == "fsdp2" and world.size > 1:  # fsdp2 shards what it is given: start equal
        ref = build_tiny_model(MICRO, build_char_tokenizer(), seed=0).state_dict()
        policy.load_full_state_dict(ref)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
    (ids, attn, pos, adv, L), mask, rows, num_tokens = rank_rows(world)  # global normaliser
    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        total = torch.zeros(())
        for mb in rows.split(2):  # micro-batches of 2 completions
            logp = completion_logprobs(policy.model, ids[mb], attn[mb], pos[mb], L)  # [2, T]
            per_token, _ = POLICY_LOSSES.get("clip")(logp, torch.full_like(logp, -4.4), adv[mb],
                                                    mask[mb])  # ratios vary, some clip
            loss = AGGREGATIONS.get("token_mean")(per_token, mask[mb], num_tokens=num_tokens)
            loss.backward()
            total += loss.detach()
        policy.sync_gradients()
        norm = policy.clip_grad_norm_(0.5)
        opt.step()
        losses += [float(world.sum(total)), float(norm)]
    return {"losses": losses, "weights": policy.full_state_dict()}


def assert_equivalent(strategy: str) -> None:
    one = train(World(), "none")
    ranks = run_ranks(train, 2, strategy)
    assert ranks[0]["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert ranks[1]["losses"] == ranks[0]["losses"]  # reduced: every rank sees the global loss
    assert len(set(one["losses"][::2])) == STEPS  # the loss changes from step to step
    w1, w2 = one["weights"], ranks[0]["weights"]
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5
    # the step moved the weights well beyond the tolerance (the comparison is not vacuous)
    start = build_tiny_model(MICRO, build_char_tokenizer(), seed=0).state_dict()
    assert max((w1[k] - start[k]).abs().max().item() for k in w1) > 1e-3
    if strategy == "fsdp2":
        assert ranks[1]["weights"] == {}  # gathered to rank 0 only


@pytest.mark.distributed
def test_ddp_step_equals_one_process():
    assert_equivalent("ddp")


@pytest.mark.distributed
def test_fsdp2_step_equals_one_process():
    assert_equivalent("fsdp2")


def test_strategy_none_refused_with_many_processes():
    from r1lab.train.distributed import resolve_strategy

    with pytest.raises(ValueError, match="train.strategy: none, but 2 processes"):
        resolve_strategy("none", World(0, 2))
    with pytest.raises(ValueError, match="unknown 'zero'"):
        resolve_strategy("zero", World())


def test_peak_memory_reports_rss():
    before = peak_memory()["memory/peak_rss_mb"]
    x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB touched
    x += 1
    after = peak_memory()["memory/peak_rss_mb"]
    assert after >= before and after > 64


def test_auto_strategy_follows_accelerate_env(monkeypatch):
    from r1lab.train.distributed import offload_requested, resolve_strategy

    assert resolve_strategy("auto", World(0, 2)) == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    assert resolve_strategy("auto", World(0, 2)) == "fsdp2" and offload_requested(False)
    assert resolve_strategy("auto", World(0, 1)) == "none"
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert resolve_strategy("auto", World(0, 2)) == "deepspeed"


def test_deepspeed_plan_follows_config_and_accelerate(monkeypatch, tmp_path):
    """The ZeRO stage and options r1lab hands DeepSpeed (no deepspeed needed)."""
    from r1lab.train.deepspeed_engine import build_config, check_resumable, user_config, zero_stage

    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
    assert zero_stage(None, {}) == 2 and zero_stage(3, {}) == 3
    assert zero_stage(None, {"zero_optimization": {"stage": 3}}) == 3
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")  # accelerate launch's zero_stage
    assert zero_stage(None, {}) == 3 and zero_stage(2, {}) == 2
    with pytest.raises(ValueError, match="stage 2 or 3, not 1"):
        zero_stage(1, {})
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", '
                    '"offload_optimizer": {"device": "cpu"}}, "gradient_clipping": "auto"}')
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    cfg = build_config(zero_stage(None, user_config(None)), World(0, 4), user_config(None))
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                        "overlap_comm": False, "contiguous_gradients": True}
    assert cfg["train_batch_size"] == 4 and not cfg["managed_gradient_accumulation"]
    for bad, match in (({"bf16": {"enabled": True}}, "enables bf16"),
                       ({"optimizer": {"type": "Adam"}}, "'optimizer' section")):
        with pytest.raises(ValueError, match=match):
            build_config(2, World(0, 2), bad)
    state = {"stage": 3, "world_size": 2, "partitions": [{}, {}]}
    with pytest.raises(ValueError, match="ZeRO-3 optimiser partitions of 2 processes; this run "
                                         "is ZeRO-3 on 4"):
        check_resumable(state, World(0, 4), 3, "step-2")
    with pytest.raises(ValueError, match="written under train.strategy: deepspeed"):
        check_resumable(state, World(), None, "step-2")
    check_resumable(state, World(1, 2), 3, "step-2")  # same world, same stage: fine
