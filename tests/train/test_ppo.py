"""PPO with a critic: value model shapes, a trainer step that moves both networks, selection."""

from pathlib import Path

import pytest
import torch

from r1lab.config import RunConfig
from r1lab.data.tasks import generate
from r1lab.rewards import RewardBatch
from r1lab.train.grpo import GRPOTrainer
from r1lab.train.ppo import PPOTrainer, ValueModel, build_trainer

MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}


def make_cfg(critic=None, **algorithm) -> RunConfig:
    raw = {
        "model": {"tiny": MICRO},
        "rollout": {"group_size": 1, "max_new_tokens": 8},  # PPO needs no groups
        "train": {"batch_size": 4, "micro_batch_size": 4, "seed": 0},
        "optim": {"lr": 1e-2},
        "algorithm": {"advantage": "gae", **algorithm},
        "log": {"progress": False},
    }
    if critic is not None:
        raw["critic"] = critic
    return RunConfig.model_validate(raw)


class LengthReward:
    def __call__(self, texts, rows):
        total = [len(t) / 10 for t in texts]
        return RewardBatch(total=total, components={"length": total}, metrics={}, errors=0)


def rows():
    return [p.row() for p in generate("addition", 16, seed=0, split="train")]


def test_value_model_gives_one_value_per_completion_token(micro_model):
    critic = ValueModel(micro_model)
    ids = torch.randint(3, 50, (3, 7))  # L = 4 prompt tokens, T = 3 completion tokens
    v = critic(ids, torch.ones_like(ids), torch.arange(7).expand(3, 7), prompt_len=4)
    assert v.shape == (3, 3)
    assert torch.equal(v, torch.zeros(3, 3))  # the head starts at 0
    v.sum().backward()
    assert critic.head.weight.grad.abs().sum() > 0
    # the backbone is a copy: training it leaves the policy alone
    assert critic.backbone is not micro_model.get_decoder()


def test_ppo_step_trains_policy_and_critic(tmp_path: Path, micro_model, tokenizer):
    trainer = PPOTrainer(make_cfg(critic={"lr": 1e-2}), micro_model, tokenizer, rows(), tmp_path)
    trainer.rewards = LengthReward()
    policy0 = [p.detach().clone() for p in micro_model.parameters()]
    critic0 = [p.detach().clone() for p in trainer.critic.parameters()]
    first = trainer.step()
    # group_size 1: GRPO's advantage would be 0 everywhere; GAE still gives a gradient
    assert first["grad_norm"] > 0 and first["value_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(policy0, micro_model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic0, trainer.critic.parameters()))
    assert {"value_mean", "return_mean", "explained_var", "vf_clip_frac", "entropy"} <= set(first)
    second = trainer.step()
    assert second["value_mean"] != 0.0  # the critic's first update moved its estimates


def test_critic_regression_reduces_the_value_loss(tmp_path, micro_model, tokenizer):
    trainer = PPOTrainer(make_cfg(critic={"lr": 1e-3, "value_clip": None}), micro_model, tokenizer,
                         rows(), tmp_path)
    ids = torch.randint(3, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    attn, pos, mask = torch.ones_like(ids), torch.arange(8).expand(4, 8), torch.ones(4, 4)
    returns = torch.tensor([[1.0], [0.0], [1.0], [0.5]]).expand(4, 4)
    losses = []
    for _ in range(6):
        with torch.no_grad():
            values = trainer.critic(ids, attn, pos, 4)
        losses.append(trainer._update_critic(ids, attn, pos, 4, mask, values, returns)["value_loss"])
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_build_trainer_picks_ppo_from_a_critic_section(tmp_path, micro_model, tokenizer):
    assert type(build_trainer(make_cfg(critic={}), micro_model, tokenizer, rows(), tmp_path)) is PPOTrainer
    grpo = build_trainer(make_cfg(advantage="grpo"), micro_model, tokenizer, rows(), tmp_path)
    assert type(grpo) is GRPOTrainer
    with pytest.raises(ValueError, match="critic"):
        PPOTrainer(make_cfg(), micro_model, tokenizer, rows(), tmp_path)


def test_ppo_save_writes_the_critic(tmp_path, micro_model, tokenizer):
    from safetensors.torch import load_file

    trainer = PPOTrainer(make_cfg(critic={}), micro_model, tokenizer, rows(), tmp_path)
    out = trainer.save(tmp_path / "ckpt")
    state = load_file(out / "critic.safetensors")
    assert "head.weight" in state and (out / "config.json").is_file()
