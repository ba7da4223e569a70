"""PPO with a critic: value model shapes, a trainer step that moves both networks, selection."""

from pathlib import Path

import pytest
import torch

from r1lab.config import RunConfig
from r1lab.data.tasks import generate
from r1lab.rewards import RewardBatch
from r1lab.train.batch import TokenBatch
from r1lab.train.critic import Critic, ValueModel
from r1lab.train.grpo import GRPOTrainer, build_trainer

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


def test_packed_critic_values_and_gradients_equal_the_padded_forward(micro_model, tokenizer):
    """The critic runs through the packed forward (each prompt once, no padding) in PPO steps:
    its values and every gradient must be the padded Hugging Face forward's."""
    from r1lab.train.common import join_prompt_completion
    from r1lab.train.packed import PackedBatch

    critic = ValueModel(micro_model)
    torch.manual_seed(0)
    torch.nn.init.normal_(critic.head.weight)  # a non-zero head, so values and gradients vary
    prompts = tokenizer(["Q:12+30\nA:", "Hi", "Q:7+5\nA:"])["input_ids"]
    prompts = [p for p in prompts for _ in range(2)]  # two completions per prompt
    lengths = torch.tensor([1, 6, 3, 6, 5, 2])
    mask = (torch.arange(6)[None] < lengths[:, None]).float()
    comp = torch.randint(5, len(tokenizer), (6, 6)).masked_fill(mask == 0, tokenizer.pad_token_id)
    ids, attn, pos, L = join_prompt_completion(prompts, comp, mask, tokenizer.pad_token_id)
    weights = torch.linspace(-1, 2, mask.numel()).view_as(mask)
    grads = []
    for packed in (False, True):
        critic.zero_grad()
        if packed:
            values = critic.packed(PackedBatch.from_padded(ids, attn, L, torch.arange(6)))
        else:
            values = critic(ids, attn, pos, L)
        (values * mask * weights).sum().backward()
        grads.append((values.detach() * mask, {k: p.grad.clone() for k, p in critic.named_parameters()}))
    (padded, g_padded), (packed_v, g_packed) = grads
    assert packed_v.shape == padded.shape == (6, 6) and padded.abs().sum() > 0
    torch.testing.assert_close(packed_v, padded, atol=2e-5, rtol=0)
    for k, want in g_padded.items():  # float32 rounding, relative to each gradient's scale
        scale = want.abs().max().item()
        assert scale > 0, k
        torch.testing.assert_close(g_packed[k], want, atol=1e-6 * scale, rtol=1e-4, msg=k)


def test_ppo_step_trains_policy_and_critic(tmp_path: Path, micro_model, tokenizer):
    trainer = GRPOTrainer(make_cfg(critic={"lr": 1e-2}), micro_model, tokenizer, rows(), tmp_path)
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
    trainer = GRPOTrainer(make_cfg(critic={"lr": 1e-3, "value_clip": None}), micro_model,
                          tokenizer, rows(), tmp_path)
    ids = torch.randint(3, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    attn, pos, mask = torch.ones_like(ids), torch.arange(8).expand(4, 8), torch.ones(4, 4)
    returns = torch.tensor([[1.0], [0.0], [1.0], [0.5]]).expand(4, 4)
    losses = []
    tokens = TokenBatch(ids, attn, pos, 4, mask, mask, group_size=1)
    for _ in range(6):
        values = trainer.critic.values(tokens)
        losses.append(trainer.critic.regress(tokens, mask, values, returns)["value_loss"])
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_a_critic_section_gives_the_step_a_critic(tmp_path, micro_model, tokenizer):
    ppo = build_trainer(make_cfg(critic={}), micro_model, tokenizer, rows(), tmp_path)
    assert isinstance(ppo.critic, Critic) and isinstance(ppo.critic.model, ValueModel)
    grpo = build_trainer(make_cfg(advantage="grpo"), micro_model, tokenizer, rows(), tmp_path)
    assert type(grpo) is GRPOTrainer and grpo.critic is None
    with pytest.raises(ValueError, match="critic"):
        Critic(make_cfg(), micro_model, ppo.forward)


def test_ppo_save_writes_the_critic(tmp_path, micro_model, tokenizer):
    from safetensors.torch import load_file

    trainer = GRPOTrainer(make_cfg(critic={}), micro_model, tokenizer, rows(), tmp_path)
    out = trainer.save(tmp_path / "ckpt")
    state = load_file(out / "critic.safetensors")
    assert "head.weight" in state and (out / "config.json").is_file()


def test_a_resumed_ppo_run_continues_exactly_where_it_stopped(tmp_path, micro_model, tokenizer):
    """2 steps, checkpoint, a fresh trainer resumes and takes step 3: policy, critic and both
    optimisers end equal to an uninterrupted 3-step run."""
    import copy

    from r1lab.train.common import seed_everything

    def trainer(run_dir):
        seed_everything(0)
        tr = GRPOTrainer(make_cfg(critic={"lr": 1e-2}), copy.deepcopy(micro_model), tokenizer,
                         rows(), run_dir)
        tr.rewards = LengthReward()
        return tr

    straight = trainer(tmp_path / "a")
    for _ in range(3):
        straight.step()
    first = trainer(tmp_path / "b")
    first.step(), first.step()
    ckpt = first.checkpoint()
    first.step()  # moves on past the checkpoint: the resumed trainer must not see this
    resumed = trainer(tmp_path / "c")
    resumed.resume(ckpt)
    assert resumed.step_count == 2
    resumed.step()
    for a, b in ((straight.model, resumed.model), (straight.critic.model, resumed.critic.model)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)
    sa, sb = straight.critic.optimizer.state_dict(), resumed.critic.optimizer.state_dict()
    assert sa["state"][0]["step"] == sb["state"][0]["step"] == 3
    torch.testing.assert_close(sa["state"][0]["exp_avg"], sb["state"][0]["exp_avg"], atol=0, rtol=0)


def test_a_grpo_checkpoint_cannot_be_resumed_as_ppo(tmp_path, micro_model, tokenizer):
    grpo = GRPOTrainer(make_cfg(advantage="grpo"), micro_model, tokenizer, rows(), tmp_path / "g")
    ckpt = grpo.checkpoint()
    ppo = GRPOTrainer(make_cfg(critic={}), micro_model, tokenizer, rows(), tmp_path / "p")
    with pytest.raises(ValueError, match="critic"):
        ppo.resume(ckpt)
